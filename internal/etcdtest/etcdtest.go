// Package etcdtest starts embedded etcd servers for etcdstore's tests and
// benchmarks: real etcd members on loopback ports, with their data in the
// test's temporary directory, stopped when the test ends.
//
// With ETCDSTORE_TEST_ENDPOINTS set to the client URLs of a running etcd
// server (comma-separated), Start gives each test a key namespace of its
// own on that server instead, and tests that need a member of their own,
// a configured one or a cluster are skipped.
package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/etcdstore/etcdstore/internal/embedetcd"
	"github.com/etcdstore/etcdstore/internal/faultproxy"
	"go.uber.org/zap"
)

// startTimeout bounds how long a member may take to become ready.
const startTimeout = 30 * time.Second

// Server is one embedded etcd member, or a namespace on a running etcd
// server (see ETCDSTORE_TEST_ENDPOINTS in the package documentation).
type Server struct {
	tb   testing.TB
	Cfg  *embed.Config
	Etcd *embed.Etcd // nil while stopped

	external  []string // the running server's client URLs, or nil
	namespace string   // the test's key prefix on the running server
}

// Option changes a member's configuration before it starts.
type Option func(*embed.Config)

// EndpointsEnv names the environment variable that points the tests at a
// running etcd server.
const EndpointsEnv = "ETCDSTORE_TEST_ENDPOINTS"

// Own marks a test that needs a member of its own: one it stops, or
// whose revision, leases or compaction it counts on. Such a test does not
// run against a shared server.
func Own() Option {
	return func(*embed.Config) {}
}

// WithFsync turns fsync back on, as in production; tests leave it off for
// speed.
func WithFsync() Option {
	return func(c *embed.Config) { c.UnsafeNoFsync = false }
}

// WithQuota sets the member's --quota-backend-bytes.
func WithQuota(bytes int64) Option {
	return func(c *embed.Config) { c.QuotaBackendBytes = bytes }
}

// WithCompaction turns on periodic auto-compaction with the given
// retention (--auto-compaction-mode periodic
// --auto-compaction-retention).
func WithCompaction(retention time.Duration) Option {
	return func(c *embed.Config) {
		c.AutoCompactionMode = embed.CompactorModePeriodic
		c.AutoCompactionRetention = retention.String()
	}
}

// Start starts a single-member etcd on free loopback ports, data in
// tb.TempDir(), and stops it when the test ends.
func Start(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	if eps := externalEndpoints(); eps != nil {
		if len(opts) > 0 {
			tb.Skipf("needs an etcd member of its own, and %s points at a shared server", EndpointsEnv)
		}
		return &Server{tb: tb, external: eps, namespace: nextNamespace(tb)}
	}
	dir := tb.TempDir()
	// A port found free can be taken before etcd binds it: start again
	// on fresh ports (the data directory is still empty).
	for attempt := 1; ; attempt++ {
		cfg := Config(tb, "default", dir)
		cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
		for _, opt := range opts {
			opt(cfg)
		}
		e, err := startEtcd(cfg)
		if err == nil {
			s := &Server{tb: tb, Cfg: cfg, Etcd: e}
			tb.Cleanup(s.Stop)
			return s
		}
		if !errors.Is(err, syscall.EADDRINUSE) || attempt == bindAttempts {
			tb.Fatalf("etcdtest: %v", err)
		}
		if err := os.RemoveAll(dir); err != nil {
			tb.Fatalf("etcdtest: %v", err)
		}
	}
}

// Config returns the configuration of a member named name with its data
// in dir, listening on free loopback ports, fsync off, logging nothing.
// The caller sets InitialCluster.
func Config(tb testing.TB, name, dir string) *embed.Config {
	tb.Helper()
	cfg := embedetcd.Local(name, dir)
	// etcd's defaults, not the example's: tests that need compaction or a
	// quota ask for them (WithCompaction, WithQuota).
	cfg.AutoCompactionRetention = embed.NewConfig().AutoCompactionRetention
	cfg.QuotaBackendBytes = 0
	cfg.UnsafeNoFsync = true
	client, peer := freeURL(tb), freeURL(tb)
	cfg.ListenClientUrls = []url.URL{client}
	cfg.AdvertiseClientUrls = []url.URL{client}
	cfg.ListenPeerUrls = []url.URL{peer}
	cfg.AdvertisePeerUrls = []url.URL{peer}
	cfg.InitialClusterToken = name + "-" + strings.ReplaceAll(tb.Name(), "/", "-")
	return cfg
}

// freeURL returns an http URL on a loopback port that was free a moment
// ago, or fails the test.
func freeURL(tb testing.TB) url.URL {
	tb.Helper()
	u, err := freeLoopbackURL()
	if err != nil {
		tb.Fatalf("etcdtest: %v", err)
	}
	return u
}

// freeLoopbackURL returns an http URL on a loopback port that was free a
// moment ago.
func freeLoopbackURL() (url.URL, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return url.URL{}, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return url.URL{Scheme: "http", Host: l.Addr().String()}, nil
}

// Start starts the member (again, after Stop, on the same data directory
// and ports) and waits until it is ready to serve.
func (s *Server) Start() {
	s.tb.Helper()
	s.needOwn("Start")
	e, err := startEtcd(s.Cfg)
	if err != nil {
		s.tb.Fatalf("etcdtest: %v", err)
	}
	s.Etcd = e
}

// startEtcd starts a member and waits until it is ready, or fails.
func startEtcd(cfg *embed.Config) (*embed.Etcd, error) {
	return embedetcd.Start(cfg, startTimeout)
}

// Stop stops the member; its data stays for a later Start.
func (s *Server) Stop() {
	if s.external != nil {
		s.tb.Helper()
		s.needOwn("Stop")
	}
	if s.Etcd != nil {
		s.Etcd.Close()
		s.Etcd = nil
	}
}

// Endpoints returns the member's client URLs. A client made from them
// alone would see every test's keys on a shared server: use Client there.
func (s *Server) Endpoints() []string {
	s.tb.Helper()
	s.needOwn("Endpoints")
	return endpoints(s.Cfg)
}

func endpoints(cfg *embed.Config) []string {
	var eps []string
	for _, u := range cfg.AdvertiseClientUrls {
		eps = append(eps, u.String())
	}
	return eps
}

// Client returns a client of the member, closed when the test ends.
func (s *Server) Client(tb testing.TB) *clientv3.Client {
	tb.Helper()
	if s.external != nil {
		return namespaced(tb, NewClient(tb, clientv3.Config{Endpoints: s.external}), s.namespace)
	}
	return NewClient(tb, clientv3.Config{Endpoints: s.Endpoints()})
}

// NewClient returns a client with cfg, a 5 s dial timeout unless cfg sets
// one and no logging, closed when the test ends.
func NewClient(tb testing.TB, cfg clientv3.Config) *clientv3.Client {
	tb.Helper()
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	c, err := clientv3.New(cfg)
	if err != nil {
		tb.Fatalf("etcdtest: client for %v: %v", cfg.Endpoints, err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// Context returns a context for one step of a test, canceled when the
// test ends or after d.
func Context(tb testing.TB, d time.Duration) context.Context {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	tb.Cleanup(cancel)
	return ctx
}

// Revision returns the cluster's current revision, as c sees it: it moves
// on with every write, so the difference between two readings counts the
// writes between them.
func Revision(tb testing.TB, c *clientv3.Client) int64 {
	tb.Helper()
	needOwnClient(tb, c, "Revision")
	return Head(tb, c)
}

// Head returns the cluster's current revision, as c sees it, on any
// server, shared or not: for reading the history up to now. On a shared
// server other tests write too, so unlike Revision's, the difference of
// two readings counts nothing.
func Head(tb testing.TB, c *clientv3.Client) int64 {
	tb.Helper()
	resp, err := c.Get(Context(tb, 30*time.Second), "revision", clientv3.WithCountOnly())
	if err != nil {
		tb.Fatalf("etcdtest: read revision: %v", err)
	}
	return resp.Header.Revision
}

// Leases returns how many leases the cluster holds, as c sees it.
func Leases(tb testing.TB, c *clientv3.Client) int {
	tb.Helper()
	needOwnClient(tb, c, "Leases")
	resp, err := c.Leases(Context(tb, 30*time.Second))
	if err != nil {
		tb.Fatalf("etcdtest: list leases: %v", err)
	}
	return len(resp.Leases)
}

// Proxy returns a fault-injecting proxy to the member's client port,
// closed when the test ends: a client given its URL reaches the member
// through a link the test can hold, reset or refuse.
func (s *Server) Proxy(tb testing.TB) *faultproxy.Proxy {
	tb.Helper()
	s.needOwn("Proxy")
	p, err := faultproxy.New(s.Cfg.ListenClientUrls[0].Host)
	if err != nil {
		tb.Fatalf("etcdtest: proxy: %v", err)
	}
	tb.Cleanup(p.Close)
	return p
}

// AppliedIndex returns the raft index the member has applied: it moves
// with every entry applied, a Txn whose compare failed included.
func (s *Server) AppliedIndex() uint64 {
	s.tb.Helper()
	s.needOwn("AppliedIndex")
	return s.Etcd.Server.AppliedIndex()
}

// Keys returns the keys under prefix that c reads, in order.
func Keys(tb testing.TB, c *clientv3.Client, prefix string) []string {
	tb.Helper()
	resp, err := c.Get(Context(tb, 30*time.Second), prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		tb.Fatal(err)
	}
	keys := make([]string, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		keys = append(keys, string(kv.Key))
	}
	return keys
}
