// Command pki writes the keys and certificates of the test control plane into a
// directory, with Go's crypto only (a fresh machine may lack openssl):
//
//	ca.crt ca.key                  the cluster CA (also the client CA of kube-apiserver)
//	apiserver.crt apiserver.key    kube-apiserver's serving certificate, for every --san
//	admin.crt admin.key            a client certificate in group system:masters
//	sa.key sa.pub                  the ServiceAccount token signing key pair
//
//	pki --dir DIR --san 127.0.0.1 --san localhost --san 10.0.2.100 ...
//
// Every key is ECDSA P-256; certificates are valid for ten years from an hour ago. The
// files are for throwaway test clusters on loopback and nothing else.
package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

type sans []string

func (s *sans) String() string     { return strings.Join(*s, ",") }
func (s *sans) Set(v string) error { *s = append(*s, v); return nil }

func main() {
	dir := flag.String("dir", "", "output directory (required)")
	var names sans
	flag.Var(&names, "san", "a subject alternative name of the serving certificate (IP or DNS name); repeatable")
	flag.Parse()
	if *dir == "" || len(names) == 0 {
		fail(fmt.Errorf("usage: pki --dir DIR --san NAME [--san NAME...]"))
	}
	if err := run(*dir, names); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "pki: %v\n", err)
	os.Exit(1)
}

func run(dir string, names []string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	now := time.Now().Add(-time.Hour)
	caKey, err := newKey()
	if err != nil {
		return err
	}
	caTemplate := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "kipvs-test-ca"},
		NotBefore:             now,
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caCert, err := sign(caTemplate, caKey.Public(), nil, caKey, filepath.Join(dir, "ca"), caKey)
	if err != nil {
		return err
	}

	serving := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:   now,
		NotAfter:    now.AddDate(10, 0, 0),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			serving.IPAddresses = append(serving.IPAddresses, ip)
		} else {
			serving.DNSNames = append(serving.DNSNames, n)
		}
	}
	if err := leaf(serving, caCert, caKey, filepath.Join(dir, "apiserver")); err != nil {
		return err
	}

	admin := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kipvs-test-admin", Organization: []string{"system:masters"}},
		NotBefore:   now,
		NotAfter:    now.AddDate(10, 0, 0),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if err := leaf(admin, caCert, caKey, filepath.Join(dir, "admin")); err != nil {
		return err
	}

	saKey, err := newKey()
	if err != nil {
		return err
	}
	if err := writeKey(filepath.Join(dir, "sa.key"), saKey); err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(saKey.Public())
	if err != nil {
		return err
	}
	return writePEM(filepath.Join(dir, "sa.pub"), "PUBLIC KEY", pub, 0o644)
}

func newKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// leaf creates a key and a certificate from template, signed by the CA, as BASE.crt and
// BASE.key.
func leaf(template *x509.Certificate, ca *x509.Certificate, caKey crypto.Signer, base string) error {
	key, err := newKey()
	if err != nil {
		return err
	}
	_, err = sign(template, key.Public(), ca, caKey, base, key)
	return err
}

// sign issues template for pub (self-signed when parent is nil) and writes BASE.crt and
// BASE.key (key being the private half of pub).
func sign(template *x509.Certificate, pub crypto.PublicKey, parent *x509.Certificate, parentKey crypto.Signer, base string, key *ecdsa.PrivateKey) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return nil, err
	}
	template.SerialNumber = serial
	if parent == nil {
		parent = template
	}
	der, err := x509.CreateCertificate(rand.Reader, template, parent, pub, parentKey)
	if err != nil {
		return nil, err
	}
	if err := writePEM(base+".crt", "CERTIFICATE", der, 0o644); err != nil {
		return nil, err
	}
	if err := writeKey(base+".key", key); err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return writePEM(path, "EC PRIVATE KEY", der, 0o600)
}

func writePEM(path, kind string, der []byte, mode os.FileMode) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), mode)
}
