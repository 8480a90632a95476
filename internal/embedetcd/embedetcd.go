// Package embedetcd starts etcd members inside the process: the example
// app's single member, the load test's, and the tests' (through
// internal/etcdtest).
package embedetcd

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/etcdstore/etcdstore/internal/dirlock"
)

// The space settings of the members Local configures. etcd keeps every
// revision of every key until it is compacted, and its default is never
// to compact; once its database file reaches the quota it refuses every
// write until an operator disarms its NOSPACE alarm (etcd docs,
// "Maintenance"). A session store rewrites its keys all day.
const (
	// CompactionRetention is the history periodic auto-compaction keeps:
	// every 5 minutes etcd compacts at the revision of 5 minutes before,
	// so it holds 5 to 10 minutes of history. Kubernetes' apiserver
	// compacts every 5 minutes too (--etcd-compaction-interval); 5
	// minutes is ample for a watch to resume after a reconnect.
	CompactionRetention = 5 * time.Minute
	// QuotaBytes is the --quota-backend-bytes: etcd's default, 2 GiB,
	// set explicitly. Ten minutes of history at 1000 commits a second is
	// about 6 × 10^5 commits of some 460 bytes, 0.28 GB
	// (docs/capacity.md), so the quota leaves room for several times that.
	QuotaBytes = 2 << 30
)

// Local returns the configuration of a single member named name, with its
// data in dir, fsync on, logging nothing, serving clients on a loopback
// port the system picks: after Start, e.Clients[0].Addr() says which. With
// one member no peer ever dials its peer URL, so that port is the
// system's choice too. It compacts every CompactionRetention and has a
// quota of QuotaBytes.
func Local(name, dir string) *embed.Config {
	cfg := embed.NewConfig()
	cfg.Name = name
	cfg.Dir = dir
	cfg.AutoCompactionMode = embed.CompactorModePeriodic
	cfg.AutoCompactionRetention = CompactionRetention.String()
	cfg.QuotaBackendBytes = QuotaBytes
	// Quiet: etcd logs its listeners' closing as errors. A fatal error
	// still reaches the caller through e.Err().
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	local := []url.URL{{Scheme: "http", Host: "127.0.0.1:0"}}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = local, local
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = local, local
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	return cfg
}

// Start starts a member with cfg and waits until it is ready to serve,
// until it fails, or for timeout, whichever comes first. On an error the
// member is closed.
//
// First it locks cfg.Dir (LockFile in it), until the member has stopped:
// a directory another member holds, in this process or another, fails
// at once with an error that wraps ErrDirInUse. Without the lock, etcd
// would wait without end for its database file's lock.
func Start(cfg *embed.Config, timeout time.Duration) (*embed.Etcd, error) {
	lock, err := lockDir(cfg.Dir)
	if err != nil {
		return nil, err
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		lock.release()
		return nil, fmt.Errorf("start etcd %s in %s: %w", cfg.Name, cfg.Dir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
		lock.holdUntil(e.Server.StopNotify())
		return e, nil
	case err := <-e.Err():
		e.Close()
		lock.release()
		return nil, fmt.Errorf("etcd %s in %s: %w", cfg.Name, cfg.Dir, err)
	case <-time.After(timeout):
		e.Close()
		lock.release()
		return nil, fmt.Errorf("etcd %s in %s not ready after %v", cfg.Name, cfg.Dir, timeout)
	}
}

// LockFile is the file in a member's data directory that Start locks.
const LockFile = "embedetcd.lock"

// ErrDirInUse is wrapped by Start's error when another member, in this
// process or another, holds the data directory.
var ErrDirInUse = errors.New("embedded etcd: data directory in use")

// dirInUseError says which directory is in use, and by whom.
type dirInUseError struct {
	dir, lock, by string
}

func (e *dirInUseError) Error() string {
	return fmt.Sprintf("embedded etcd: data directory %s is in use by %s (lock %s)", e.dir, e.by, e.lock)
}

func (e *dirInUseError) Unwrap() error { return ErrDirInUse }

// dirLock is this process's lock of one data directory.
type dirLock struct {
	path string
	lock *dirlock.Lock
	// Guarded by heldMu:
	stopped  <-chan struct{} // closed once the member has stopped; nil while it starts
	released bool
}

// heldMu protects held and the dirLocks in it.
var heldMu sync.Mutex

// held maps the path of each lock file this process holds to its lock.
var held = make(map[string]*dirLock)

// lockDir creates dir if need be and locks it. A lock this process holds
// for a member that has stopped is released first: the goroutine of
// holdUntil may not have run yet, and a member restarted at once on its
// directory must not find it in use.
func lockDir(dir string) (*dirLock, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: data directory %s: %w", dir, err)
	}
	// etcd's own mode for its data directory (fileutil.PrivateDirMode).
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("embedded etcd: %w", err)
	}
	path := filepath.Join(abs, LockFile)
	heldMu.Lock()
	defer heldMu.Unlock()
	if prev := held[path]; prev != nil {
		if !prev.stoppedLocked() {
			return nil, &dirInUseError{dir: abs, lock: path, by: "another etcd member of this process"}
		}
		prev.releaseLocked()
	}
	l, err := dirlock.TryLock(path)
	if errors.Is(err, dirlock.ErrLocked) {
		return nil, &dirInUseError{dir: abs, lock: path, by: "another process"}
	}
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: %w", err)
	}
	lock := &dirLock{path: path, lock: l}
	held[path] = lock
	return lock, nil
}

// holdUntil keeps the lock until stopped is closed: etcd closes it once
// its database and WAL are closed (EtcdServer.StopNotify).
func (l *dirLock) holdUntil(stopped <-chan struct{}) {
	heldMu.Lock()
	l.stopped = stopped
	heldMu.Unlock()
	go func() {
		<-stopped
		l.release()
	}()
}

// stoppedLocked reports whether the member that holds l has stopped.
// heldMu must be held.
func (l *dirLock) stoppedLocked() bool {
	if l.stopped == nil {
		return false
	}
	select {
	case <-l.stopped:
		return true
	default:
		return false
	}
}

// release releases l, once.
func (l *dirLock) release() {
	heldMu.Lock()
	defer heldMu.Unlock()
	l.releaseLocked()
}

// releaseLocked releases l, once. heldMu must be held.
func (l *dirLock) releaseLocked() {
	if l.released {
		return
	}
	l.released = true
	if held[l.path] == l {
		delete(held, l.path)
	}
	// Closing the file drops the lock; nothing else can fail here.
	l.lock.Unlock()
}
