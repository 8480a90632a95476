package etcdstore

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if any test leaves a goroutine behind: a store
// has none of its own, and every embedded etcd and client a test starts is
// stopped by its cleanup.
//
// One goroutine is SCS's own: scs.New always starts a MemStore whose
// cleanup loop runs until StopCleanup, and calling StopCleanup right after
// scs.New races with the loop's start (scs v2.9.0 memstore.go).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("github.com/alexedwards/scs/v2/memstore.(*MemStore).startCleanup"))
}
