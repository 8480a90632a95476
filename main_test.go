package etcdstore

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/etcdstore/etcdstore/internal/etcdtest"
)

// TestMain fails the run if any test leaves a goroutine behind: a store
// has none of its own, and every embedded etcd and client a test starts is
// stopped by its cleanup; the member the runnable examples share is
// stopped after the run, before the check.
//
// One goroutine is SCS's own: scs.New always starts a MemStore whose
// cleanup loop runs until StopCleanup, and calling StopCleanup right after
// scs.New races with the loop's start (scs v2.9.0 memstore.go).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(stopSharedAfter{m},
		goleak.IgnoreTopFunction("github.com/alexedwards/scs/v2/memstore.(*MemStore).startCleanup"))
}

// stopSharedAfter runs the tests, then stops the examples' shared member.
type stopSharedAfter struct{ m *testing.M }

func (s stopSharedAfter) Run() int {
	defer etcdtest.StopShared()
	return s.m.Run()
}
