ip link add cbr0 type bridge
ip addr add 10.244.1.1/24 dev cbr0
ip link set cbr0 up
