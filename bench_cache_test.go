package etcdstore_test

import (
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/etcdstore/etcdstore"
)

// Benchmarks of the read cache (WithReadCache).

// cachedStore returns a store with the read cache, closed when the
// benchmark ends, once its cache serves Finds.
func cachedStore(b *testing.B, store func() *etcdstore.EtcdStore, token string) *etcdstore.EtcdStore {
	b.Helper()
	s := store()
	b.Cleanup(func() { s.Close() })
	deadline := time.Now().Add(30 * time.Second)
	for s.Stats().CacheReads == 0 {
		if time.Now().After(deadline) {
			b.Fatal("the read cache did not serve a Find in 30 s")
		}
		if _, _, err := s.Find(token); err != nil {
			b.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return s
}

// BenchmarkFindCached compares Find from the read cache with a raw
// linearizable Get and with Find without the cache, over hotSessions
// sessions on 32 goroutines. fallbacks/1k is how many Finds per 1000 the
// cache could not serve.
func BenchmarkFindCached(b *testing.B) {
	for _, size := range valueSizes {
		b.Run(size.name, func(b *testing.B) {
			client, ctx := benchServer(b)
			tokens := newTokens(hotSessions)
			keys := keysOf(tokens)
			value := newValue(size.n)
			plain := etcdstore.New(client)
			expiry := time.Now().Add(sessionLifetime)
			if err := fill(len(tokens), func(i int) error { return plain.CommitCtx(ctx, tokens[i], value, expiry) }); err != nil {
				b.Fatal(err)
			}
			store := cachedStore(b, func() *etcdstore.EtcdStore { return etcdstore.New(client, etcdstore.WithReadCache()) }, tokens[0])
			storeOp := findOp(ctx, "store", store, tokens)
			rawOp := rawGetOp(ctx, client, keys)
			uncachedOp := findOp(ctx, "uncached", plain, tokens)
			before := store.Stats()
			s, base := interleave(b, nil, storeOp, rawOp, uncachedOp)
			reportBaselines(b, s, []contender{rawOp, uncachedOp}, base)
			after := store.Stats()
			b.ReportMetric(float64(after.CacheFallbacks-before.CacheFallbacks)*1000/float64(s.n), "fallbacks/1k")
		})
	}
}

// BenchmarkAllCached compares All from the read cache with All without
// it (a paged read), over 10k and 100k sessions of 256 bytes. The 100k
// case is left out of -short runs.
func BenchmarkAllCached(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(strconv.Itoa(n/1000)+"k", func(b *testing.B) {
			if n > 10_000 && testing.Short() {
				b.Skip("100k sessions take too long to commit for -short")
			}
			client, ctx := benchServer(b)
			plain := etcdstore.New(client)
			tokens := newTokens(n)
			value := newValue(256)
			expiry := time.Now().Add(sessionLifetime)
			if err := fill(n, func(i int) error { return plain.CommitCtx(ctx, tokens[i], value, expiry) }); err != nil {
				b.Fatal(err)
			}
			store := cachedStore(b, func() *etcdstore.EtcdStore { return etcdstore.New(client, etcdstore.WithReadCache()) }, tokens[0])
			start := time.Now()
			all, err := plain.AllCtx(ctx)
			paged := time.Since(start)
			if err != nil || len(all) != n {
				b.Fatalf("All without the cache: %d sessions, %v", len(all), err)
			}
			for b.Loop() {
				all, err := store.AllCtx(ctx)
				if err != nil || len(all) != n {
					b.Fatalf("All from the cache: %d sessions, %v", len(all), err)
				}
			}
			b.ReportMetric(float64(paged.Nanoseconds()), "paged-ns")
			b.ReportMetric(float64(paged.Nanoseconds())/(float64(b.Elapsed().Nanoseconds())/float64(b.N)), "x-paged")
		})
	}
}

// BenchmarkCacheMemory measures the heap the read cache takes per session
// of 256 bytes and of 4 KiB, over 100k sessions (10k under -short).
func BenchmarkCacheMemory(b *testing.B) {
	n := 100_000
	if testing.Short() {
		n = 10_000
	}
	for _, size := range valueSizes {
		b.Run(size.name, func(b *testing.B) {
			client, ctx := benchServer(b)
			plain := etcdstore.New(client)
			tokens := newTokens(n)
			value := newValue(size.n)
			expiry := time.Now().Add(sessionLifetime)
			if err := fill(n, func(i int) error { return plain.CommitCtx(ctx, tokens[i], value, expiry) }); err != nil {
				b.Fatal(err)
			}
			var perSession float64
			for b.Loop() {
				before := heapInUse()
				store := cachedStore(b, func() *etcdstore.EtcdStore { return etcdstore.New(client, etcdstore.WithReadCache()) }, tokens[0])
				perSession = float64(heapInUse()-before) / float64(n)
				runtime.KeepAlive(store)
				store.Close()
			}
			b.ReportMetric(perSession, "bytes/session")
			b.ReportMetric(perSession*100_000/(1<<20), "MB/100k")
		})
	}
}
