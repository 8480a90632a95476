// Package embedetcd starts etcd members inside the process: the example
// app's single member, the load test's, and the tests' (through
// internal/etcdtest).
package embedetcd

import (
	"fmt"
	"net/url"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
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
func Start(cfg *embed.Config, timeout time.Duration) (*embed.Etcd, error) {
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start etcd %s in %s: %w", cfg.Name, cfg.Dir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("etcd %s in %s: %w", cfg.Name, cfg.Dir, err)
	case <-time.After(timeout):
		e.Close()
		return nil, fmt.Errorf("etcd %s in %s not ready after %v", cfg.Name, cfg.Dir, timeout)
	}
}
