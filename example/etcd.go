package main

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/etcdstore/etcdstore"
	"github.com/etcdstore/etcdstore/internal/embedetcd"
)

// startWait is how long the app waits for etcd at startup, login and
// first read together: cfg.wait, or etcdTimeout.
func startWait(cfg config) time.Duration {
	if cfg.wait > 0 {
		return cfg.wait
	}
	return etcdTimeout
}

// etcdConn is the app's link to etcd.
type etcdConn struct {
	client *clientv3.Client
	member *embed.Etcd // the embedded member, or nil
}

// failed returns a channel that receives the embedded member's fatal
// error, or nil (which never receives) for a remote cluster.
func (c *etcdConn) failed() <-chan error {
	if c.member == nil {
		return nil
	}
	return c.member.Err()
}

// close closes the client, then stops the embedded member.
func (c *etcdConn) close() {
	c.client.Close()
	if c.member != nil {
		c.member.Close()
	}
}

// connect returns a client of the etcd cluster at cfg.endpoints, or of a
// single-member etcd it starts in cfg.dataDir when there are none, once
// the cluster answers a read of the store's keys.
func connect(ctx context.Context, cfg config) (*etcdConn, error) {
	tlsConfig, err := clientTLS(cfg)
	if err != nil {
		return nil, err
	}
	conn := &etcdConn{}
	endpoints := cfg.endpoints
	if len(endpoints) == 0 {
		member, err := startMember(cfg.dataDir)
		if err != nil {
			return nil, err
		}
		conn.member = member
		endpoints = []string{"http://" + member.Clients[0].Addr().String()}
	}
	// One wait for the login (-user), which clientv3.New makes before it
	// returns, and the first read: the same with -user as without.
	wait := startWait(cfg)
	deadline := time.Now().Add(wait)
	if len(cfg.endpoints) > 0 {
		log.Printf("waiting for etcd at %s (at most %v)", strings.Join(endpoints, ","), wait)
	}
	client, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: wait,
		// Without keepalive, a connection to a member that stopped
		// answering (a dead host, a dropped link) stays open and holds
		// every request sent to it until its deadline; with it, gRPC drops
		// the connection about 12 s in (docs/reliability.md). 10 s is
		// gRPC's least.
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
		TLS:                  tlsConfig,
		Username:             cfg.user,
		Password:             cfg.password,
		Logger:               zap.NewNop(),
	})
	if err != nil {
		if conn.member != nil {
			conn.member.Close()
		}
		return nil, clientError(cfg, endpoints, err)
	}
	conn.client = client
	if err := waitReady(ctx, cfg, client, deadline); err != nil {
		conn.close()
		return nil, err
	}
	return conn, nil
}

// startMember starts the embedded etcd, its data in dir.
func startMember(dir string) (*embed.Etcd, error) {
	member, err := embedetcd.Start(embedetcd.Local("default", dir), etcdTimeout)
	if errors.Is(err, embedetcd.ErrDirInUse) {
		return nil, fmt.Errorf("%w; stop it or pass another -data", err)
	}
	if err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		abs = dir
	}
	log.Printf("started an embedded etcd at http://%s, data in %s", member.Clients[0].Addr(), abs)
	return member, nil
}

// clientError explains the error of clientv3.New, which logs in as
// cfg.user when there is one.
func clientError(cfg config, endpoints []string, err error) error {
	at := strings.Join(endpoints, ",")
	switch {
	case errors.Is(err, rpctypes.ErrAuthFailed):
		return fmt.Errorf("etcd at %s refused user %q: are -user and the password (-password, or ETCD_PASSWORD) right? (%w)", at, cfg.user, err)
	case errors.Is(err, context.DeadlineExceeded):
		return notAnswered(cfg, endpoints, err)
	}
	return fmt.Errorf("etcd client for %s: %w", at, err)
}

// notAnswered is the error of an etcd that did not answer within the
// start-up wait: what to check, and what a probe of each endpoint found.
func notAnswered(cfg config, endpoints []string, err error) error {
	hint := ""
	for _, ep := range endpoints {
		if h := probeEndpoint(ep, probeTimeout); h != "" {
			hint += "; " + h
		}
	}
	return fmt.Errorf("etcd at %s did not answer within %v: is it running, are these its client URLs (-etcd)%s, and does it have a leader?%s (%w)", strings.Join(endpoints, ","), startWait(cfg), tlsHint(cfg), hint, err)
}

// probeTimeout bounds each step of probeEndpoint.
const probeTimeout = 2 * time.Second

// probeEndpoint says what a TCP connection to ep finds that explains an
// etcd that does not answer, or "": nothing listens there; an https://
// URL whose server answers a plain http request (etcd serves /version on
// its client port); an http:// URL whose server speaks TLS. The TLS
// handshake checks no certificate, only whether the server speaks TLS.
func probeEndpoint(ep string, timeout time.Duration) string {
	scheme, host, ok := strings.Cut(ep, "://")
	if !ok {
		scheme, host = "http", ep
	}
	host, _, _ = strings.Cut(host, "/")
	conn, err := net.DialTimeout("tcp", host, timeout)
	if err != nil {
		return fmt.Sprintf("%s: nothing accepts connections there (%v)", ep, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	if scheme == "https" {
		fmt.Fprintf(conn, "GET /version HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", host)
		buf := make([]byte, 512)
		n, _ := io.ReadFull(conn, buf)
		// A TLS server of Go's net/http answers such a request with a 400
		// that names HTTPS.
		if resp := string(buf[:n]); strings.HasPrefix(resp, "HTTP/1.") && !strings.Contains(resp, "HTTPS") {
			return fmt.Sprintf("%s: the server there speaks plain http, not TLS: use http://%s", ep, host)
		}
		return ""
	}
	// A probe: nothing is sent over the connection, so its certificate
	// needs no check. A TLS server that refuses the handshake (it wants
	// a client certificate) speaks TLS all the same.
	err = tls.Client(conn, &tls.Config{InsecureSkipVerify: true, ServerName: "etcd"}).Handshake()
	var alert tls.AlertError
	if err == nil || errors.As(err, &alert) {
		return fmt.Sprintf("%s: the server there speaks TLS: use https://%s, with -cacert for its CA", ep, host)
	}
	return ""
}

// tlsHint is what to check of the TLS flags when etcd does not answer.
func tlsHint(cfg config) string {
	if cfg.caCert == "" && cfg.cert == "" {
		return ""
	}
	return ", does it accept -cert, is its certificate signed by -cacert"
}

// waitReady waits until the cluster answers a read of one key of the
// sessions and one of their index, as the store's user, or deadline: it
// needs a quorum, as etcdctl's "endpoint health" read does, and read
// permission on both prefixes.
func waitReady(ctx context.Context, cfg config, client *clientv3.Client, deadline time.Time) error {
	at := strings.Join(client.Endpoints(), ",")
	readyCtx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	index := etcdstore.PrincipalIndexPrefix(cfg.prefix)
	_, err := client.Txn(readyCtx).Then(clientv3.OpGet(cfg.prefix), clientv3.OpGet(index)).Commit()
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.DeadlineExceeded):
		return notAnswered(cfg, client.Endpoints(), err)
	case cfg.user == "" && (errors.Is(err, rpctypes.ErrUserEmpty) || errors.Is(err, rpctypes.ErrPermissionDenied)):
		// ErrPermissionDenied: etcd took the common name of -cert as the
		// user (client-certificate auth).
		return fmt.Errorf("etcd at %s has auth enabled, and a client without -user may not read the sessions: pass -user, and its password with -password or %s (%w)", at, passwordEnv, err)
	case errors.Is(err, rpctypes.ErrPermissionDenied):
		return fmt.Errorf("etcd at %s: user %q may not read the sessions (prefix %q) or their index (prefix %q): grant its role readwrite on both (%w)", at, cfg.user, cfg.prefix, index, err)
	}
	return fmt.Errorf("etcd at %s: %w", at, err)
}

// clientTLS returns the TLS configuration of -cacert, -cert and -key,
// made as etcdctl makes its own (transport.TLSInfo), or nil when none is
// given. A file that cannot be read, or whose first PEM block is not a
// certificate (-cacert, -cert) or a private key (-key), is an error that
// names its flag.
func clientTLS(cfg config) (*tls.Config, error) {
	if cfg.caCert == "" && cfg.cert == "" && cfg.key == "" {
		return nil, nil
	}
	for _, f := range []struct{ flag, path, want string }{
		{"cacert", cfg.caCert, "certificate"}, {"cert", cfg.cert, "certificate"}, {"key", cfg.key, "private key"},
	} {
		if f.path == "" {
			continue
		}
		b, err := os.ReadFile(f.path)
		if err != nil {
			return nil, fmt.Errorf("-%s: %w", f.flag, err)
		}
		block, _ := pem.Decode(b)
		if block == nil {
			return nil, fmt.Errorf("-%s %s: not a PEM file", f.flag, f.path)
		}
		if !strings.HasSuffix(strings.ToLower(block.Type), f.want) {
			return nil, fmt.Errorf("-%s %s: no %s in it (its first PEM block is of type %s)", f.flag, f.path, f.want, block.Type)
		}
	}
	info := transport.TLSInfo{TrustedCAFile: cfg.caCert, CertFile: cfg.cert, KeyFile: cfg.key, Logger: zap.NewNop()}
	tlsConfig, err := info.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("TLS from -cacert %q, -cert %q, -key %q: %w", cfg.caCert, cfg.cert, cfg.key, err)
	}
	return tlsConfig, nil
}
