package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdstore/etcdstore/internal/etcdtest"
)

// TestFollowerRestartUnderLoad crashes a follower and starts it again
// while commits go on: the commits in flight through it fail, nothing
// acknowledged is lost, and the restarted member, once it has caught up,
// serves every session.
func TestFollowerRestartUnderLoad(t *testing.T) {
	t.Parallel()
	c := etcdtest.StartCluster(t, 3)
	s := NewWithPrefix(c.Client(t), faultPrefix(t))
	follower := (c.Leader() + 1) % len(c.Members)

	load := startCommitLoad(t, s, 6)
	progress := func(what string) {
		t.Helper()
		n := load.acked.Load()
		faultWaitFor(t, what, func() bool { return load.acked.Load() >= n+100 })
	}
	progress("100 commits before the follower stops")
	c.Kill(follower)
	progress("100 commits while the follower is down")
	c.Restart(follower)
	progress("100 commits after the follower is back")
	results := load.stop()

	rep := checkLoad(t, results)
	lost := lostSessions(t, NewWithPrefix(c.MemberClient(t, follower), faultPrefix(t)), results)
	t.Logf("follower restart: %d commits acknowledged, %d failed, %d lost; errors: %s", rep.acked, rep.failed, len(lost), rep.errSummary())
	if len(lost) > 0 {
		t.Errorf("%d acknowledged sessions lost, first %q", len(lost), lost[0])
	}
}

// storedLeases returns the lease of every key under the store's prefix.
func storedLeases(t *testing.T, cli *clientv3.Client, s *EtcdStore) map[string]clientv3.LeaseID {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), faultWaitTimeout)
	defer cancel()
	resp, err := cli.Get(ctx, s.keys.prefix, clientv3.WithRange(s.keys.end))
	if err != nil {
		t.Fatalf("get %q: %v", s.keys.prefix, err)
	}
	leases := make(map[string]clientv3.LeaseID)
	for _, kv := range resp.Kvs {
		leases[tokenFor(s.keys.prefix, kv.Key)] = clientv3.LeaseID(kv.Lease)
	}
	return leases
}

// TestRestart closes a single-member etcd and starts it again. On the same
// data directory every session is found, and the store keeps committing
// onto the leases it was granted before the restart, which etcd persists.
// On a wiped data directory (a cluster rebuilt, or restored from a backup
// older than the leases) the store's leases are unknown to etcd, and it
// commits on fresh ones.
func TestRestart(t *testing.T) {
	t.Parallel()
	base := time.Now()
	// Three expiries in three buckets, so three leases.
	expiries := []time.Time{base.Add(24 * time.Hour), base.Add(time.Hour), base.Add(10 * time.Minute)}
	commitAll := func(t *testing.T, s *EtcdStore, round string) map[string]time.Time {
		t.Helper()
		ctx := etcdtest.Context(t, faultWaitTimeout)
		committed := make(map[string]time.Time)
		for i := range 30 {
			token := fmt.Sprintf("%s-%02d", round, i)
			expiry := expiries[i%len(expiries)]
			if err := s.CommitCtx(ctx, token, faultData(token), expiry); err != nil {
				t.Fatalf("CommitCtx(%q): %v", token, err)
			}
			committed[token] = expiry
		}
		return committed
	}
	findAll := func(t *testing.T, s *EtcdStore, tokens map[string]time.Time, want bool) {
		t.Helper()
		ctx := etcdtest.Context(t, faultWaitTimeout)
		for token := range tokens {
			b, found, err := s.FindCtx(ctx, token)
			if err != nil {
				t.Fatalf("FindCtx(%q): %v", token, err)
			}
			if found != want || (want && string(b) != string(faultData(token))) {
				t.Errorf("FindCtx(%q) = %q, %v; want found %v", token, b, found, want)
			}
		}
	}

	t.Run("same data", func(t *testing.T) {
		t.Parallel()
		srv := etcdtest.Start(t, etcdtest.Own())
		cli := srv.Client(t)
		s := NewWithPrefix(cli, faultPrefix(t))
		before := commitAll(t, s, "before")
		granted := make(map[clientv3.LeaseID]bool)
		for _, id := range storedLeases(t, cli, s) {
			granted[id] = true
		}
		if len(granted) != len(expiries) {
			t.Fatalf("%d leases before the restart, want %d", len(granted), len(expiries))
		}

		srv.Stop()
		srv.Start()

		findAll(t, s, before, true)
		after := commitAll(t, s, "after")
		findAll(t, s, after, true)
		leases := storedLeases(t, cli, s)
		for token := range after {
			if !granted[leases[token]] {
				t.Errorf("session %q committed after the restart is on lease %x, want one granted before it", token, leases[token])
			}
		}
		ctx := etcdtest.Context(t, faultWaitTimeout)
		for id := range granted {
			ttl, err := cli.TimeToLive(ctx, id)
			if err != nil || ttl.TTL <= 0 {
				t.Errorf("lease %x after the restart: TTL %v, %v; want it alive", id, ttl, err)
			}
		}
	})

	t.Run("wiped data", func(t *testing.T) {
		t.Parallel()
		srv := etcdtest.Start(t, etcdtest.Own())
		cli := srv.Client(t)
		s := NewWithPrefix(cli, faultPrefix(t))
		before := commitAll(t, s, "before")
		old := make(map[clientv3.LeaseID]bool)
		for _, id := range storedLeases(t, cli, s) {
			old[id] = true
		}

		srv.Stop()
		srv.Cfg.Dir = t.TempDir()
		srv.Start()

		findAll(t, s, before, false) // the data went with the directory
		after := commitAll(t, s, "after")
		findAll(t, s, after, true)
		for token, id := range storedLeases(t, cli, s) {
			if old[id] {
				t.Errorf("session %q is on lease %x, granted by the wiped etcd", token, id)
			}
		}
	})
}

// TestLeasesRevokedUnderLoad revokes every lease, from another client, in
// the middle of a commit stream. The revoke takes the sessions on those
// leases with it, as it must; the store then meets a lease etcd no longer
// knows, forgets it and commits on a fresh one, so that no commit fails,
// and no session committed after the revoke is lost.
func TestLeasesRevokedUnderLoad(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	s := NewWithPrefix(srv.Client(t), faultPrefix(t))
	admin := srv.Client(t)

	load := startCommitLoad(t, s, 4)
	faultWaitFor(t, "100 commits before the revoke", func() bool { return load.acked.Load() >= 100 })

	// The leases the store attaches keys to now, all granted before the
	// listing below, so revoked by it.
	s.leases.mu.Lock()
	inUse := make(map[clientv3.LeaseID]bool)
	for _, e := range s.leases.table.entries {
		inUse[e.id] = true
	}
	s.leases.mu.Unlock()
	ctx := etcdtest.Context(t, faultWaitTimeout)
	leases, err := admin.Leases(ctx)
	if err != nil {
		t.Fatalf("Leases: %v", err)
	}
	var revokedInUse int
	for _, l := range leases.Leases {
		if _, err := admin.Revoke(ctx, l.ID); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			t.Fatalf("Revoke(%x): %v", l.ID, err)
		}
		if inUse[l.ID] {
			revokedInUse++
		}
	}
	revoked := time.Now()
	if revokedInUse == 0 {
		t.Fatalf("none of the %d leases revoked was in the store's use (%v)", len(leases.Leases), inUse)
	}
	n := load.acked.Load()
	faultWaitFor(t, "100 commits after the revoke", func() bool { return load.acked.Load() >= n+100 })
	results := load.stop()

	// On one healthy member, a revoked lease is the only trouble a commit
	// can meet, and the store gets over it within the commit.
	rep := checkLoad(t, results)
	if rep.failed > 0 {
		t.Errorf("%d commits failed, want none: %s", rep.failed, rep.errSummary())
	}
	var after []commitOutcome
	var vanished int
	all := faultAll(t, s)
	for _, r := range results {
		if r.start.After(revoked) {
			after = append(after, r)
		} else if r.err == nil && all[r.token] == nil {
			vanished++
		}
	}
	lost := lostSessions(t, s, after)
	t.Logf("leases revoked: %d leases (%d in the store's use), %d commits acknowledged, %d failed; of those before the revoke %d went with their lease; %d commits after it, %d lost",
		len(leases.Leases), revokedInUse, rep.acked, rep.failed, vanished, len(after), len(lost))
	if vanished == 0 {
		t.Errorf("no session committed before the revoke went with its lease: the revoke missed the store's leases")
	}
	if len(lost) > 0 {
		t.Errorf("%d sessions committed after the revoke lost, first %q", len(lost), lost[0])
	}
}
