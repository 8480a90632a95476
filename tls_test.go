package etcdstore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/etcdstore/etcdstore/internal/etcdtest"
	"github.com/etcdstore/etcdstore/internal/tlstest"
)

// clientConfig returns a TLS configuration that trusts ca and, when
// client is not nil, presents a certificate client issued.
func clientConfig(t *testing.T, ca, client *tlstest.CA) *tls.Config {
	t.Helper()
	cfg := &tls.Config{RootCAs: ca.Pool, MinVersion: tls.VersionTLS12}
	if client != nil {
		cert, key := client.Issue(t, "app", x509.ExtKeyUsageClientAuth)
		pair, err := tls.X509KeyPair(cert, key)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg
}

// startTLSEtcd starts an etcd that serves clients over https only and
// requires a client certificate issued by ca. The certificates and key
// files live in the test's temporary directory.
func startTLSEtcd(t *testing.T, ca *tlstest.CA) *etcdtest.Server {
	t.Helper()
	dir := t.TempDir()
	// etcd's gRPC gateway dials the server with the server's own
	// certificate, so it is valid for both ends.
	cert, key := ca.Issue(t, "etcd", x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
	files := map[string][]byte{"ca.pem": ca.PEM, "server.pem": cert, "server-key.pem": key}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return etcdtest.Start(t, func(cfg *embed.Config) {
		for _, urls := range [][]url.URL{cfg.ListenClientUrls, cfg.AdvertiseClientUrls} {
			for i := range urls {
				urls[i].Scheme = "https"
			}
		}
		cfg.ClientTLSInfo.CertFile = filepath.Join(dir, "server.pem")
		cfg.ClientTLSInfo.KeyFile = filepath.Join(dir, "server-key.pem")
		cfg.ClientTLSInfo.TrustedCAFile = filepath.Join(dir, "ca.pem")
		cfg.ClientTLSInfo.ClientCertAuth = true
	})
}

// TestTLS runs the store through a client that presents a certificate to
// an etcd that requires one. Clients without a certificate, with one
// from another authority, or without TLS, get etcdstore: errors from
// every method within their context's deadline, and write nothing.
func TestTLS(t *testing.T) {
	t.Parallel()
	ca := tlstest.NewCA(t, "etcdstore test CA")
	srv := startTLSEtcd(t, ca)
	if eps := srv.Endpoints(); len(eps) != 1 || !strings.HasPrefix(eps[0], "https://127.0.0.1:") {
		t.Fatalf("endpoints %q, want one https loopback URL", eps)
	}
	const prefix = "t/tls/app:"
	good := etcdtest.NewClient(t, clientv3.Config{Endpoints: srv.Endpoints(), TLS: clientConfig(t, ca, ca)})
	s := NewWithPrefix(good, prefix)
	ctx := etcdtest.Context(t, 30*time.Second)
	expiry := time.Now().Add(time.Hour)
	for _, tok := range []string{"a", "b"} {
		if err := s.CommitCtx(ctx, tok, []byte("data "+tok), expiry); err != nil {
			t.Fatalf("Commit(%q) over TLS: %v", tok, err)
		}
	}
	if got, found, err := s.FindCtx(ctx, "a"); err != nil || !found || string(got) != "data a" {
		t.Fatalf("Find over TLS = %q, %v, %v", got, found, err)
	}
	if err := s.DeleteCtx(ctx, "a"); err != nil {
		t.Fatalf("Delete over TLS: %v", err)
	}
	if all, err := s.AllCtx(ctx); err != nil || len(all) != 1 || string(all["b"]) != "data b" {
		t.Fatalf("All over TLS = %q, %v; want b alone", all, err)
	}

	other := tlstest.NewCA(t, "another CA")
	bad := []struct {
		name     string
		endpoint string
		tls      *tls.Config
	}{
		{"no client certificate", srv.Endpoints()[0], clientConfig(t, ca, nil)},
		{"client certificate of another CA", srv.Endpoints()[0], clientConfig(t, ca, other)},
		{"server not trusted", srv.Endpoints()[0], clientConfig(t, other, ca)},
		{"no TLS", "http://" + strings.TrimPrefix(srv.Endpoints()[0], "https://"), nil},
	}
	// Each client's four calls run at once, all clients together, so the
	// test waits about one deadline in all.
	const deadline = 2 * time.Second
	start := time.Now()
	var wg sync.WaitGroup
	type result struct {
		client, op string
		err        error
		found      bool
	}
	results := make(chan result, 4*len(bad))
	for _, b := range bad {
		c := etcdtest.NewClient(t, clientv3.Config{Endpoints: []string{b.endpoint}, TLS: b.tls})
		bs := NewWithPrefix(c, prefix)
		run := func(op string, f func(ctx context.Context) (bool, error)) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), deadline)
				defer cancel()
				found, err := f(ctx)
				results <- result{b.name, op, err, found}
			}()
		}
		run("Commit", func(ctx context.Context) (bool, error) {
			return false, bs.CommitCtx(ctx, "c", []byte("data c"), expiry)
		})
		run("Find", func(ctx context.Context) (bool, error) {
			_, found, err := bs.FindCtx(ctx, "b")
			return found, err
		})
		run("Delete", func(ctx context.Context) (bool, error) {
			return false, bs.DeleteCtx(ctx, "b")
		})
		run("All", func(ctx context.Context) (bool, error) {
			all, err := bs.AllCtx(ctx)
			return len(all) > 0, err
		})
	}
	wg.Wait()
	close(results)
	if took := time.Since(start); took > deadline+5*time.Second {
		t.Errorf("the refused calls took %v with a %v deadline", took, deadline)
	}
	for r := range results {
		if r.err == nil || r.found || !strings.HasPrefix(r.err.Error(), "etcdstore: ") {
			t.Errorf("%s with %s = found %v, %v; want an etcdstore: error", r.op, r.client, r.found, r.err)
		}
		t.Logf("%s with %s: %v", r.op, r.client, r.err)
	}

	all, err := s.AllCtx(ctx)
	if err != nil || len(all) != 1 || string(all["b"]) != "data b" {
		t.Fatalf("All over TLS after the refused clients = %q, %v; want b alone", all, err)
	}
}
