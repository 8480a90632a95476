package etcdstore

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/etcdstore/etcdstore/internal/etcdtest"
)

// TestReadCacheBatchedCommits: commits that share a batch share one
// revision, so the read cache's watch sees many events at one revision.
// A session committed in a batch is seen by the very next Find of a store
// with the read cache, as is every other commit of its batch, and the
// cache answered those Finds.
func TestReadCacheBatchedCommits(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	reader := cachedStore(t, srv.Client(t))
	writer := NewWithPrefix(srv.Client(t), reader.keys.prefix)
	const goroutines, rounds = 32, 40
	expiry := time.Now().Add(time.Hour)
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			token := fmt.Sprint("t", g)
			for i := range rounds {
				want := fmt.Sprint("v", i)
				if err := writer.Commit(token, []byte(want), expiry); err != nil {
					errs <- err
					return
				}
				got, found, err := reader.Find(token)
				if err != nil || !found || string(got) != want {
					errs <- fmt.Errorf("Find(%s) = %q, %v, %v right after the commit of %q", token, got, found, err, want)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Every session as last committed, read at once from the cache.
	all, err := reader.All()
	if err != nil {
		t.Fatal(err)
	}
	for g := range goroutines {
		if got := string(all[fmt.Sprint("t", g)]); got != fmt.Sprint("v", rounds-1) {
			t.Errorf("All()[t%d] = %q, want v%d", g, got, rounds-1)
		}
	}
	ws, rs := writer.Stats(), reader.Stats()
	if ws.CommitBatches == 0 {
		t.Errorf("no commit shared a batch (%d commits)", ws.Commits)
	}
	if rs.CacheReads < goroutines*rounds*9/10 {
		t.Errorf("%d of %d Finds answered from the cache (%d fell back), want nearly all", rs.CacheReads, goroutines*rounds, rs.CacheFallbacks)
	}
	t.Logf("%d commits in %d batches of %d; %d Finds from the cache, %d fell back",
		ws.Commits, ws.CommitBatches, ws.BatchedCommits, rs.CacheReads, rs.CacheFallbacks)
}
