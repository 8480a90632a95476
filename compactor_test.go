package etcdstore_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdstore/etcdstore"
	"github.com/etcdstore/etcdstore/internal/etcdtest"
)

// TestRunCompactor runs the compactor on three app servers of one
// cluster, each with its own client, while sessions are committed, and
// checks that the history is compacted, one interval behind, by exactly
// one of them per interval.
func TestRunCompactor(t *testing.T) {
	t.Parallel()
	const (
		interval  = 300 * time.Millisecond
		intervals = 8
	)
	srv := etcdtest.Start(t, etcdtest.Own())
	check := srv.Client(t)
	store := etcdstore.NewWithPrefix(srv.Client(t), "compactor:")
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()

	wg.Go(func() {
		for i := 0; ctx.Err() == nil && i < 100_000; i++ {
			if err := store.CommitCtx(ctx, strconv.Itoa(i%100), []byte("x"), time.Now().Add(time.Hour)); err != nil && ctx.Err() == nil {
				t.Errorf("commit: %v", err)
				return
			}
		}
	})
	start := time.Now()
	for range 3 {
		c := srv.Client(t)
		wg.Go(func() {
			// A request that outlasts the interval on a loaded machine
			// fails and is tried again next interval: logged, not fatal.
			err := etcdstore.RunCompactor(ctx, c, interval, func(err error) { t.Logf("compactor: %v", err) })
			if !errors.Is(err, context.Canceled) {
				t.Errorf("RunCompactor returned %v, want context.Canceled", err)
			}
		})
	}
	// At least intervals, and on until etcd has compacted some history
	// (a loaded machine may fail an interval's compaction), at most 100.
	for i := 0; i < 100; i++ {
		time.Sleep(interval)
		if i+1 < intervals {
			continue
		}
		_, err := check.Get(etcdtest.Context(t, 10*time.Second), "compactor:0", clientv3.WithRev(1))
		if errors.Is(err, rpctypes.ErrCompacted) {
			break
		}
	}
	cancel()
	wg.Wait()
	elapsed := time.Since(start)

	resp, err := check.Get(etcdtest.Context(t, 10*time.Second), etcdstore.CompactorKey)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("%s: %v, %v", etcdstore.CompactorKey, resp, err)
	}
	// The key's version counts the intervals some server took: one each,
	// not one per server.
	taken, most := resp.Kvs[0].Version, int64(elapsed/interval)+1
	t.Logf("%d intervals taken in %v of %v each", taken, elapsed.Round(time.Millisecond), interval)
	if taken < 2 || taken > most {
		t.Errorf("%d intervals taken in %v, want one per interval of %v: 2 to %d", taken, elapsed, interval, most)
	}
	announced, err := strconv.ParseInt(string(resp.Kvs[0].Value), 10, 64)
	if err != nil || announced <= 1 {
		t.Fatalf("last compaction revision %q: %v", resp.Kvs[0].Value, err)
	}
	// The last interval's compaction may have been cut short by the
	// cancel, and any may fail on a loaded machine, so etcd's compaction
	// revision lies between 1 and the last one announced: some history is
	// gone, and none of the last interval's. A watch from revision 1 says
	// where it lies.
	wctx, wcancel := context.WithCancel(etcdtest.Context(t, 10*time.Second))
	defer wcancel()
	w := <-check.Watch(wctx, "compactor:0", clientv3.WithRev(1))
	if !errors.Is(w.Err(), rpctypes.ErrCompacted) || w.CompactRevision <= 1 || w.CompactRevision > announced {
		t.Errorf("watch from revision 1: %v, compaction revision %d, want ErrCompacted at a revision in (1, %d]", w.Err(), w.CompactRevision, announced)
	}
}

func TestRunCompactorRejectsInterval(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t).Client(t)
	for _, d := range []time.Duration{0, -time.Second} {
		if err := etcdstore.RunCompactor(context.Background(), c, d, nil); err == nil {
			t.Errorf("RunCompactor with interval %v: no error", d)
		}
	}
}
