package etcdstore_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdstore/etcdstore"
	"github.com/etcdstore/etcdstore/internal/etcdtest"
)

// etcd keeps every revision until it is compacted, and refuses every
// write once its database file reaches --quota-backend-bytes. These tests
// commit at full speed against a member with a small quota: with
// periodic auto-compaction, scaled down from the example's, no commit
// fails and the database file stops growing; without it, commits fail
// with the store's out-of-space error. They do not run in parallel with
// other tests, so that the commit rate, and so the history a retention
// period holds, stays steady.

const (
	// soakQuota is the members' --quota-backend-bytes.
	soakQuota = 64 << 20
	// soakRetention is the auto-compaction retention: the example's 5
	// minutes scaled down in proportion to the quota and to the rate at
	// which the store commits here, about 35,000 a second with group
	// commit (etcd holds 1 to 2 retentions of history: about 30 MB).
	soakRetention = time.Second
	// soakGoroutines commit concurrently, each session soakValue bytes,
	// over soakTokens sessions, as SCS does with IdleTimeout.
	soakGoroutines = 32
	soakTokens     = 5000
	soakValue      = 300
)

// soakResult is what a soak run saw.
type soakResult struct {
	commits  int64
	failures int64
	firstErr error
	sizes    []int64 // the database file's size, sampled every 500 ms
	done     []int64 // the commits done at each sample
}

// soak commits at full speed through a store on srv for d, or until the
// first failure if stopOnFailure, sampling the database size.
func soak(t *testing.T, srv *etcdtest.Server, d time.Duration, stopOnFailure bool) soakResult {
	t.Helper()
	client := srv.Client(t)
	store := etcdstore.NewWithPrefix(client, "soak:")
	value := make([]byte, soakValue)
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	// The run ends at end: a context's Err may lag its deadline on a
	// loaded machine, and the store fails a commit once the deadline has
	// passed.
	end, _ := ctx.Deadline()
	over := func() bool { return ctx.Err() != nil || !time.Now().Before(end) }

	var (
		r        soakResult
		commits  atomic.Int64
		failures atomic.Int64
		errOnce  sync.Once
		wg       sync.WaitGroup
	)
	for g := range soakGoroutines {
		wg.Go(func() {
			for i := g; !over(); i += soakGoroutines {
				err := store.CommitCtx(ctx, fmt.Sprint("tok", i%soakTokens), value, time.Now().Add(time.Hour))
				switch {
				case err == nil:
					commits.Add(1)
				case over():
					return // the run's end, not a failure
				default:
					failures.Add(1)
					errOnce.Do(func() { r.firstErr = err })
					if stopOnFailure {
						cancel()
					}
				}
			}
		})
	}
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-tick.C:
			st, err := client.Status(etcdtest.Context(t, 10*time.Second), srv.Endpoints()[0])
			if err != nil {
				t.Errorf("status: %v", err)
				continue
			}
			r.sizes = append(r.sizes, st.DbSize)
			r.done = append(r.done, commits.Load())
		}
	}
	wg.Wait()
	r.commits, r.failures = commits.Load(), failures.Load()
	return r
}

// soakDuration is how long the soak with compaction runs: 2 minutes, or
// 20 seconds under -short.
func soakDuration() time.Duration {
	if testing.Short() {
		return 20 * time.Second
	}
	return 2 * time.Minute
}

// TestSpaceSoakWithCompaction: at full speed for soakDuration, no commit
// fails, and the database file, which compaction keeps from growing past
// the history of a few retention periods, all but stops growing: in the
// second half of the run it grows by less than a quarter of what the
// commits of that half would add without compaction (at least their
// data; without compaction the file grows by more than that, and the
// quota is full within seconds: TestSpaceSoakWithoutCompaction), or of
// the quota, whichever is more. It still
// grows in steps: where the commit rate peaks, the history of a retention
// period is larger, and bbolt's free pages come in sizes that a larger
// write may not fit (one run grew 0.4 MB in its second half, another 17.7
// MB, 6% of the 295 MB its commits wrote).
func TestSpaceSoakWithCompaction(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithQuota(soakQuota), etcdtest.WithCompaction(soakRetention))
	r := soak(t, srv, soakDuration(), false)
	t.Logf("%d commits, %d failed; database file sizes (MB, every 500 ms): %s", r.commits, r.failures, megabytes(r.sizes))
	if r.failures > 0 {
		t.Fatalf("%d of %d commits failed with compaction on; the first: %v", r.failures, r.commits+r.failures, r.firstErr)
	}
	if len(r.sizes) < 4 {
		t.Fatalf("only %d size samples", len(r.sizes))
	}
	half := len(r.sizes) / 2
	grew := maxOf(r.sizes[half:]) - maxOf(r.sizes[:half])
	uncompacted := (r.done[len(r.done)-1] - r.done[half]) * soakValue
	t.Logf("second half: the file grew %.1f MB; its commits hold %.0f MB of data", mb(grew), mb(uncompacted))
	// A run slowed by other tests or the race detector writes less, but
	// its file still grows in steps of megabytes (18 MB in one run's
	// second minute): it may grow by a quarter of the quota.
	if allowed := max(0.25*float64(uncompacted), soakQuota/4); float64(grew) > allowed {
		t.Errorf("the database file grew by %.1f MB in the second half of the run, over the %.1f MB allowed: a quarter of the %.0f MB its commits wrote, or of the quota", mb(grew), mb(int64(allowed)), mb(uncompacted))
	}
}

// TestSpaceSoakWithoutCompaction: the same load without compaction fills
// the quota, and the commits then fail with an error that wraps
// rpctypes.ErrNoSpace and says how to recover; reads and deletes still
// work, and the recovery the error names works. It shows that
// TestSpaceSoakWithCompaction can fail.
func TestSpaceSoakWithoutCompaction(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithQuota(soakQuota))
	r := soak(t, srv, 2*time.Minute, true)
	t.Logf("%d commits before the first failure: %v", r.commits, r.firstErr)
	if r.firstErr == nil {
		t.Fatalf("%d commits in 2 minutes filled no %d MiB quota", r.commits, soakQuota>>20)
	}
	if !errors.Is(r.firstErr, rpctypes.ErrNoSpace) {
		t.Fatalf("first failure %v, want one wrapping rpctypes.ErrNoSpace", r.firstErr)
	}
	for _, want := range []string{"etcdstore: commit:", "etcdctl compact", "etcdctl defrag", "etcdctl alarm disarm"} {
		if !strings.Contains(r.firstErr.Error(), want) {
			t.Errorf("error %q does not say %q", r.firstErr, want)
		}
	}
	store := etcdstore.NewWithPrefix(srv.Client(t), "soak:")
	if _, found, err := store.Find("tok0"); err != nil || !found {
		t.Errorf("Find with etcd out of space = %v, %v; want the session", found, err)
	}
	if err := store.Delete("tok1"); err != nil {
		t.Errorf("Delete with etcd out of space: %v", err)
	}

	// The way out the error names, through the client API etcdctl uses:
	// compact and defragment free the space, but writes are refused until
	// the alarm is disarmed.
	c := srv.Client(t)
	ctx := etcdtest.Context(t, time.Minute)
	alarms, err := c.AlarmList(ctx)
	if err != nil || len(alarms.Alarms) != 1 || alarms.Alarms[0].Alarm != etcdserverpb.AlarmType_NOSPACE {
		t.Fatalf("alarms %v, %v; want NOSPACE raised", alarms, err)
	}
	st, err := c.Status(ctx, srv.Endpoints()[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Compact(ctx, st.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("compact: %v", err)
	}
	if _, err := c.Defragment(ctx, srv.Endpoints()[0]); err != nil {
		t.Fatalf("defragment: %v", err)
	}
	if after, err := c.Status(ctx, srv.Endpoints()[0]); err == nil {
		t.Logf("database file %.1f MB, %.1f MB after compact and defrag", mb(st.DbSize), mb(after.DbSize))
	}
	if err := store.Commit("after-defrag", []byte("x"), time.Now().Add(time.Hour)); !errors.Is(err, rpctypes.ErrNoSpace) {
		t.Fatalf("commit after compact and defrag, alarm still raised = %v, want ErrNoSpace", err)
	}
	if _, err := c.AlarmDisarm(ctx, (*clientv3.AlarmMember)(alarms.Alarms[0])); err != nil {
		t.Fatalf("alarm disarm: %v", err)
	}
	if err := store.Commit("after-disarm", []byte("x"), time.Now().Add(time.Hour)); err != nil {
		t.Fatalf("commit after the alarm was disarmed: %v", err)
	}
}

func maxOf(v []int64) int64 {
	m := v[0]
	for _, x := range v[1:] {
		m = max(m, x)
	}
	return m
}

func mb(b int64) float64 { return float64(b) / (1 << 20) }

func megabytes(sizes []int64) string {
	s := make([]string, len(sizes))
	for i, b := range sizes {
		s[i] = fmt.Sprintf("%.0f", mb(b))
	}
	return strings.Join(s, " ")
}
