package etcdtest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/namespace"
)

// A shared server: ETCDSTORE_TEST_ENDPOINTS names a running etcd, and
// each test works under a key namespace of its own there (etcd's
// client/v3/namespace), so that tests in parallel, and runs one after
// another, do not see each other's sessions.

var (
	namespaces atomic.Int64
	runID      = fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano())
	// sharedClients holds the clients of a shared server, which
	// Revision and Leases refuse: other tests move both.
	sharedClients sync.Map // *clientv3.Client -> struct{}
)

// externalEndpoints returns the client URLs of ETCDSTORE_TEST_ENDPOINTS,
// or nil when it is not set.
func externalEndpoints() []string {
	var eps []string
	for _, ep := range strings.Split(os.Getenv(EndpointsEnv), ",") {
		if ep = strings.TrimSpace(ep); ep != "" {
			eps = append(eps, ep)
		}
	}
	return eps
}

// External reports whether the tests run against a shared server.
func External() bool {
	return externalEndpoints() != nil
}

// nextNamespace returns a key namespace that no other test of any run
// uses.
func nextNamespace(tb testing.TB) string {
	return fmt.Sprintf("etcdstore-test/%s/%d/%s/", runID, namespaces.Add(1), strings.ReplaceAll(tb.Name(), "/", "-"))
}

// namespaced confines c to the keys under ns.
func namespaced(tb testing.TB, c *clientv3.Client, ns string) *clientv3.Client {
	c.KV = noCompactKV{namespace.NewKV(c.KV, ns), tb}
	c.Watcher = namespace.NewWatcher(c.Watcher, ns)
	c.Lease = namespace.NewLease(c.Lease, ns)
	sharedClients.Store(c, struct{}{})
	tb.Cleanup(func() { sharedClients.Delete(c) })
	return c
}

// noCompactKV fails the test that compacts a shared server: compaction
// drops the history of every test's keys.
type noCompactKV struct {
	clientv3.KV
	tb testing.TB
}

func (kv noCompactKV) Compact(ctx context.Context, rev int64, opts ...clientv3.CompactOption) (*clientv3.CompactResponse, error) {
	kv.tb.Errorf("etcdtest: a test that compacts needs a member of its own: pass etcdtest.Own() to Start")
	return nil, fmt.Errorf("etcdtest: no compaction of a shared server")
}

// needOwn fails the test when s is a shared server.
func (s *Server) needOwn(what string) {
	if s.external != nil {
		s.tb.Helper()
		s.tb.Fatalf("etcdtest: %s needs a member of the test's own: pass etcdtest.Own() to Start", what)
	}
}

// needOwnClient fails the test when c is a client of a shared server.
func needOwnClient(tb testing.TB, c *clientv3.Client, what string) {
	tb.Helper()
	if _, ok := sharedClients.Load(c); ok {
		tb.Fatalf("etcdtest: %s needs a member of the test's own: pass etcdtest.Own() to Start", what)
	}
}
