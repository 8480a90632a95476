package etcdtest

import (
	"fmt"
	"os"
	"sync"

	"go.etcd.io/etcd/server/v3/embed"

	"github.com/etcdstore/etcdstore/internal/embedetcd"
)

// The shared member serves the package's runnable examples, which have no
// testing.TB to tie a member to: it starts on first use, as etcd's own
// client examples do, and StopShared stops it once the tests have run.
var shared struct {
	once sync.Once
	dir  string
	e    *embed.Etcd
	err  error
}

// SharedEndpoints returns the client URLs of the shared member, starting
// it on first use with its data in a temporary directory.
func SharedEndpoints() ([]string, error) {
	shared.once.Do(func() {
		shared.dir, shared.err = os.MkdirTemp("", "etcdstore-example-")
		if shared.err != nil {
			return
		}
		cfg := embedetcd.Local("example", shared.dir)
		cfg.UnsafeNoFsync = true
		shared.e, shared.err = embedetcd.Start(cfg, startTimeout)
	})
	if shared.err != nil {
		return nil, fmt.Errorf("etcdtest: shared member: %w", shared.err)
	}
	return []string{"http://" + shared.e.Clients[0].Addr().String()}, nil
}

// StopShared stops the shared member, if it was started, and removes its
// data.
func StopShared() {
	if shared.e != nil {
		shared.e.Close()
	}
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
}
