package etcd

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ipvirt/ipvirt/internal/source"
	"github.com/ipvirt/ipvirt/internal/testenv"
)

// pki writes a CA, a server certificate for 127.0.0.1 and a client
// certificate, all PEM, into dir.
type pki struct{ ca, serverCert, serverKey, clientCert, clientKey string }

func newPKI(t *testing.T, dir string) pki {
	t.Helper()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	now := time.Now()
	caKey := key()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ipvirt test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage) ([]byte, []byte) {
		k := key()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{usage},
			KeyUsage: x509.KeyUsageDigitalSignature, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, _ := x509.MarshalECPrivateKey(k)
		return der, kder
	}
	sc, sk := leaf(2, "etcd", x509.ExtKeyUsageServerAuth)
	cc, ck := leaf(3, "ipvirt", x509.ExtKeyUsageClientAuth)
	return pki{
		ca:         write("ca.pem", "CERTIFICATE", caDER),
		serverCert: write("server.pem", "CERTIFICATE", sc), serverKey: write("server-key.pem", "EC PRIVATE KEY", sk),
		clientCert: write("client.pem", "CERTIFICATE", cc), clientKey: write("client-key.pem", "EC PRIVATE KEY", ck),
	}
}

// waitServing waits for s to hold a lease (or, want false, checks that it
// still holds none after a while).
func waitServing(t *testing.T, s *Source, want bool) {
	t.Helper()
	if want {
		waitFor(t, 10*time.Second, "the source to hold a lease", func() bool { return s.Stats().Healthy })
		return
	}
	time.Sleep(2 * time.Second)
	if st := s.Stats(); st.Healthy {
		t.Fatalf("source holds a lease it should not have: %+v", st)
	}
	if _, err := s.Acquire(context.Background(), holder(1)); !errors.Is(err, source.ErrExhausted) {
		t.Fatalf("acquire without a lease: %v", err)
	}
}

// etcd.ca, etcd.cert and etcd.key: a cluster that requires client
// certificates serves a host with its certificate signed by the CA, and
// no host without one.
func TestTLSClientCertificates(t *testing.T) {
	t.Parallel()
	p := newPKI(t, t.TempDir())
	tc, err := Config{CA: p.ca, Cert: p.clientCert, Key: p.clientKey}.tlsConfig()
	if err != nil {
		t.Fatal(err)
	}
	endpoint, _ := testenv.StartEtcdWith(t, testenv.EtcdOptions{
		TLS: &testenv.EtcdTLS{Cert: p.serverCert, Key: p.serverKey, ClientCA: p.ca}, ClientTLS: tc})

	with := Config{Endpoints: []string{endpoint}, CA: p.ca, Cert: p.clientCert, Key: p.clientKey, DialTimeout: 500 * time.Millisecond}
	s, err := New(with, testRange, []byte("tls-host-0123456789"), t.TempDir(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	waitServing(t, s, true)
	if _, err := s.Acquire(context.Background(), holder(1)); err != nil {
		t.Fatal(err)
	}
	// The CA alone: the server asks for a client certificate it does not get.
	without := with
	without.Cert, without.Key = "", ""
	s2, err := New(without, testRange, []byte("tls-host-2-0123456789"), t.TempDir(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	waitServing(t, s2, false)
	// A key that is not the certificate's is refused before any dial.
	bad := with
	bad.Key = p.serverKey
	if _, err := New(bad, testRange, []byte("x-0123456789"), t.TempDir(), nil, nil); err == nil || !strings.Contains(err.Error(), "etcd.cert/etcd.key") {
		t.Fatalf("mismatched key: %v", err)
	}
}

// etcd.username and etcd.password_file: with etcd's authentication on, a
// host with the right password (from a 0600 file) is served; a wrong one
// is not; a file others can read is refused, naming its mode.
func TestUsernameAndPasswordFile(t *testing.T) {
	t.Parallel()
	endpoint := testenv.StartEtcd(t)
	admin, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, step := range []func() error{
		func() error { _, err := admin.UserAdd(ctx, "root", "root-pw"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := admin.UserAdd(ctx, "ipvirt", "farm-pw"); return err },
		func() error { _, err := admin.RoleAdd(ctx, "ipvirt"); return err },
		func() error {
			_, err := admin.RoleGrantPermission(ctx, "ipvirt", "/ipvirt/", clientv3.GetPrefixRangeEnd("/ipvirt/"), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := admin.UserGrantRole(ctx, "ipvirt", "ipvirt"); return err },
		func() error { _, err := admin.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	admin.Close()

	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("farm-pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Endpoints: []string{endpoint}, Username: "ipvirt", PasswordFile: pw, DialTimeout: 500 * time.Millisecond}
	s, err := New(cfg, testRange, []byte("auth-host-0123456789"), t.TempDir(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	waitServing(t, s, true)
	if _, err := s.Acquire(context.Background(), holder(1)); err != nil {
		t.Fatal(err)
	}

	wrong := filepath.Join(dir, "wrong")
	if err := os.WriteFile(wrong, []byte("guess\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.PasswordFile = wrong
	if s2, err := New(cfg, testRange, []byte("auth-host-2-0123456789"), t.TempDir(), nil, nil); err == nil {
		defer s2.Close()
		waitServing(t, s2, false)
	}

	if err := os.Chmod(pw, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.PasswordFile = pw
	if _, err := New(cfg, testRange, []byte("auth-host-3-0123456789"), t.TempDir(), nil, nil); err == nil || !strings.Contains(err.Error(), "mode 644; make it 0600") {
		t.Fatalf("password file readable by others: %v", err)
	}
}

// etcd.prefix: two farms on one cluster under their own prefixes share
// nothing: each has the whole range, and lists only its own VIPs.
func TestPrefixSeparatesFarms(t *testing.T) {
	t.Parallel()
	endpoint := testenv.StartEtcd(t)
	mk := func(prefix, id string) *Source {
		s, err := New(Config{Endpoints: []string{endpoint}, Prefix: prefix}, testRange, []byte(id), t.TempDir(), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	a, b := mk("/farm-a/", "farm-a-host-0123456789"), mk("/farm-b/", "farm-b-host-0123456789")
	size := int(testRange.End.As4()[3]-testRange.Start.As4()[3]) + 1
	for _, s := range []*Source{a, b} {
		for i := range size {
			if _, err := s.Acquire(context.Background(), holder(i)); err != nil {
				t.Fatalf("farm %s, holder %d: %v", s.cfg.Prefix, i, err)
			}
		}
		farm, err := s.Farm(context.Background())
		if err != nil || len(farm) != size {
			t.Fatalf("farm %s lists %d VIPs (%v), want %d", s.cfg.Prefix, len(farm), err, size)
		}
	}
}
