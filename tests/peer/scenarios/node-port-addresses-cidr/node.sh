# A second interface with addresses of both families, so nodePortAddresses has a choice.
ip link add eth1 type dummy
ip addr add 172.16.0.10/24 dev eth1
ip -6 addr add fd00:172:16::10/64 dev eth1 nodad
ip link set eth1 up
