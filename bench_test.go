package etcdstore_test

// Benchmarks of the store against baselines measured in the same run.
//
// Every benchmark starts its own embedded etcd member with fsync on, as
// in production, on loopback, and talks to it through one client, as an
// application does. Operations run under b.RunParallel with about
// benchGoroutines goroutines.
//
// How the ratios are made honest: for each value size, one parent
// benchmark starts one server and runs the baselines first and the store
// last as sub-benchmarks, on the same server, client, keys, values and
// parallelism, compacting the keyspace before each timed run so every
// contender starts from the same history. The store's sub-benchmark then
// reports its throughput as a multiple of each baseline's (x-raw-put,
// x-naive, x-raw-get, ...: the baseline's ns/op over the store's; above 1
// means the store is faster), from the final, reported run of each. The
// machine's background load is the noise left, so run with -count and
// take medians, e.g. with benchstat. The baselines run first so that
// whatever state they leave (the naive store's leases) weighs on the
// store, not the other way round.
//
// allocs/op counts every allocation in the process, the embedded server's
// included; allocs-over-raw is the store's allocs/op minus the raw
// call's, so the server's share, equal for both, cancels out.
// BenchmarkClientOverhead measures the store's own allocations exactly,
// with etcd's KV and lease calls stubbed out.
//
// CI runs the short set, about a minute on two cores:
//
//	go test -short -run '^$' -bench . -benchtime=100x .
//
// The full set (All over 100k sessions, the server footprint of 100k
// commits) takes a few minutes per -count:
//
//	go test -run '^$' -bench . -count 5 -timeout 60m .

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"runtime"
	"runtime/metrics"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/etcdstore/etcdstore"
	"github.com/etcdstore/etcdstore/internal/etcdtest"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
)

const (
	// benchGoroutines is about how many goroutines the parallel
	// benchmarks run: an application server's concurrent requests.
	benchGoroutines = 32
	// fillGoroutines commit the sessions a benchmark needs before it
	// starts timing.
	fillGoroutines = 64
	// sessionLifetime is the lifetime of every benchmark session.
	sessionLifetime = 24 * time.Hour
	// hotSessions is how many sessions the Commit and Find benchmarks
	// spread their operations over.
	hotSessions = 1024
	// benchTimeout bounds every etcd request of a benchmark.
	benchTimeout = 10 * time.Minute
)

var valueSizes = []struct {
	name string
	n    int
}{
	{"256B", 256},
	{"4KiB", 4 << 10},
}

// sample is what one timed run measured.
type sample struct {
	n       int
	elapsed time.Duration
	mallocs uint64
}

func (s sample) nsPerOp() float64 { return float64(s.elapsed.Nanoseconds()) / float64(s.n) }

func (s sample) allocsPerOp() float64 { return float64(s.mallocs) / float64(s.n) }

// reportOverhead reports the time and allocations per operation that s
// takes beyond base, the raw call, as ns-over-<name> and
// allocs-over-<name>.
func reportOverhead(b *testing.B, s, base sample, name string) {
	if base.n == 0 {
		return
	}
	b.ReportMetric(s.nsPerOp()-base.nsPerOp(), "ns-over-"+name)
	b.ReportMetric(s.allocsPerOp()-base.allocsPerOp(), "allocs-over-"+name)
}

// reportVersus reports the run measured as s against the baseline base,
// measured earlier in the same parent benchmark: s's throughput as a
// multiple of base's under x-<name>, and, when allocs is set, the
// allocations s makes per operation beyond base's under
// allocs-over-<name>. It reports nothing when the baseline did not run
// (filtered out by -bench).
func reportVersus(b *testing.B, s, base sample, name string, allocs bool) {
	if base.n == 0 {
		return
	}
	b.ReportMetric(base.nsPerOp()/s.nsPerOp(), "x-"+name)
	if allocs {
		b.ReportMetric(s.allocsPerOp()-base.allocsPerOp(), "allocs-over-"+name)
	}
}

// parallelism returns the b.SetParallelism argument that gives about
// benchGoroutines goroutines.
func parallelism() int {
	p := runtime.GOMAXPROCS(0)
	return (benchGoroutines + p - 1) / p
}

// runParallel times op under b.RunParallel with about benchGoroutines
// goroutines. Each goroutine has a worker number w, from 0, and counts
// its own operations in i. The timer and the allocation count cover the
// parallel section only.
func runParallel(b *testing.B, op func(w, i int) error) sample {
	b.Helper()
	b.ReportAllocs()
	b.SetParallelism(parallelism())
	var workers atomic.Int64
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		w := int(workers.Add(1) - 1)
		for i := 0; pb.Next(); i++ {
			if err := op(w, i); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	runtime.ReadMemStats(&after)
	return sample{n: b.N, elapsed: b.Elapsed(), mallocs: after.Mallocs - before.Mallocs}
}

// hotIndex spreads the operations of worker w over the hot sessions,
// each worker on its own share of them.
func hotIndex(w, i int) int {
	share := max(hotSessions/(parallelism()*runtime.GOMAXPROCS(0)), 1)
	return (w*share + i%share) % hotSessions
}

// benchServer starts an etcd member with fsync on and returns a client
// of it and a context that bounds the benchmark's requests.
func benchServer(b *testing.B) (*clientv3.Client, context.Context) {
	b.Helper()
	srv := etcdtest.Start(b, etcdtest.WithFsync())
	return srv.Client(b), etcdtest.Context(b, benchTimeout)
}

// newToken returns a token like SCS's: 43 bytes of base64url of 32
// random bytes.
func newToken() string {
	var raw [32]byte
	rand.Read(raw[:])
	return base64.RawURLEncoding.EncodeToString(raw[:])
}

func newTokens(n int) []string {
	tokens := make([]string, n)
	for i := range tokens {
		tokens[i] = newToken()
	}
	return tokens
}

func newValue(n int) []byte {
	v := make([]byte, n)
	rand.Read(v)
	return v
}

// fill runs commit(i) for every i in [0, n) on fillGoroutines goroutines.
func fill(n int, commit func(i int) error) error {
	var next atomic.Int64
	var g errgroup.Group
	for range fillGoroutines {
		g.Go(func() error {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return nil
				}
				if err := commit(i); err != nil {
					return err
				}
			}
		})
	}
	return g.Wait()
}

// compact compacts the keyspace at its current revision and waits until
// the backend has dropped the old revisions, so that the next timed run
// starts from the same history as the previous one did.
func compact(b *testing.B, ctx context.Context, client *clientv3.Client) {
	b.Helper()
	resp, err := client.Get(ctx, "compact", clientv3.WithCountOnly())
	if err != nil {
		b.Fatalf("read revision: %v", err)
	}
	_, err = client.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical())
	if err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
		b.Fatalf("compact at revision %d: %v", resp.Header.Revision, err)
	}
}

// countLeases returns how many leases the server holds.
func countLeases(b *testing.B, ctx context.Context, client *clientv3.Client) int {
	b.Helper()
	resp, err := client.Leases(ctx)
	if err != nil {
		b.Fatalf("list leases: %v", err)
	}
	return len(resp.Leases)
}

// BenchmarkCommit compares Commit with a raw Put onto one lease granted
// beforehand, the most any store on etcd can do, and with the naive
// Grant-then-Put per commit. Every commit rewrites one of hotSessions
// sessions of equal lifetime, as SCS does on every request with an
// IdleTimeout. leases/1k-commits counts the leases granted during the run
// per 1000 commits.
func BenchmarkCommit(b *testing.B) {
	for _, size := range valueSizes {
		b.Run(size.name, func(b *testing.B) {
			client, ctx := benchServer(b)
			tokens := newTokens(hotSessions)
			value := newValue(size.n)
			prefix := etcdstore.DefaultPrefix

			lease, err := client.Grant(ctx, int64((sessionLifetime+time.Hour)/time.Second))
			if err != nil {
				b.Fatal(err)
			}
			keys := make([]string, len(tokens))
			for i, t := range tokens {
				keys[i] = prefix + t
			}
			rawValue := string(value)
			naive := &naiveStore{client: client, prefix: prefix}
			store := etcdstore.New(client)

			var raw, nv sample
			b.Run("raw-put", func(b *testing.B) {
				compact(b, ctx, client)
				raw = runParallel(b, func(w, i int) error {
					_, err := client.Put(ctx, keys[hotIndex(w, i)], rawValue, clientv3.WithLease(lease.ID))
					return err
				})
			})
			b.Run("naive", func(b *testing.B) {
				compact(b, ctx, client)
				before := countLeases(b, ctx, client)
				nv = runParallel(b, func(w, i int) error {
					return naive.CommitCtx(ctx, tokens[hotIndex(w, i)], value, time.Now().Add(sessionLifetime))
				})
				after := countLeases(b, ctx, client)
				b.ReportMetric(float64(after-before)*1000/float64(b.N), "leases/1k-commits")
			})
			b.Run("store", func(b *testing.B) {
				compact(b, ctx, client)
				before := countLeases(b, ctx, client)
				s := runParallel(b, func(w, i int) error {
					return store.CommitCtx(ctx, tokens[hotIndex(w, i)], value, time.Now().Add(sessionLifetime))
				})
				after := countLeases(b, ctx, client)
				b.ReportMetric(float64(after-before)*1000/float64(b.N), "leases/1k-commits")
				reportVersus(b, s, raw, "raw-put", true)
				reportVersus(b, s, nv, "naive", false)
			})
		})
	}
}

// BenchmarkFind compares Find of a live session with a raw linearizable
// Get of its key.
func BenchmarkFind(b *testing.B) {
	for _, size := range valueSizes {
		b.Run(size.name, func(b *testing.B) {
			client, ctx := benchServer(b)
			tokens := newTokens(hotSessions)
			value := newValue(size.n)
			store := etcdstore.New(client)
			expiry := time.Now().Add(sessionLifetime)
			if err := fill(len(tokens), func(i int) error { return store.CommitCtx(ctx, tokens[i], value, expiry) }); err != nil {
				b.Fatal(err)
			}
			keys := make([]string, len(tokens))
			for i, t := range tokens {
				keys[i] = etcdstore.DefaultPrefix + t
			}

			var raw sample
			b.Run("raw-get", func(b *testing.B) {
				raw = runParallel(b, func(w, i int) error {
					resp, err := client.Get(ctx, keys[hotIndex(w, i)])
					if err == nil && len(resp.Kvs) != 1 {
						err = fmt.Errorf("get %q: %d keys, want 1", keys[hotIndex(w, i)], len(resp.Kvs))
					}
					return err
				})
			})
			b.Run("store", func(b *testing.B) {
				s := runParallel(b, func(w, i int) error {
					_, found, err := store.FindCtx(ctx, tokens[hotIndex(w, i)])
					if err == nil && !found {
						err = fmt.Errorf("find %q: not found", tokens[hotIndex(w, i)])
					}
					return err
				})
				reportVersus(b, s, raw, "raw-get", true)
			})
		})
	}
}

// BenchmarkDelete compares Delete of a live session with a raw Delete of
// its key. Each run first commits, untimed, as many sessions as it
// deletes.
func BenchmarkDelete(b *testing.B) {
	for _, size := range valueSizes {
		b.Run(size.name, func(b *testing.B) {
			client, ctx := benchServer(b)
			value := newValue(size.n)
			store := etcdstore.New(client)

			// prepare commits b.N new sessions and returns their tokens.
			prepare := func(b *testing.B) []string {
				b.Helper()
				compact(b, ctx, client)
				tokens := newTokens(b.N)
				expiry := time.Now().Add(sessionLifetime)
				if err := fill(len(tokens), func(i int) error { return store.CommitCtx(ctx, tokens[i], value, expiry) }); err != nil {
					b.Fatal(err)
				}
				return tokens
			}

			var raw sample
			b.Run("raw-delete", func(b *testing.B) {
				tokens := prepare(b)
				keys := make([]string, len(tokens))
				for i, t := range tokens {
					keys[i] = etcdstore.DefaultPrefix + t
				}
				var next atomic.Int64
				raw = runParallel(b, func(int, int) error {
					_, err := client.Delete(ctx, keys[next.Add(1)-1])
					return err
				})
			})
			b.Run("store", func(b *testing.B) {
				tokens := prepare(b)
				var next atomic.Int64
				s := runParallel(b, func(int, int) error {
					return store.DeleteCtx(ctx, tokens[next.Add(1)-1])
				})
				reportVersus(b, s, raw, "raw-delete", true)
			})
		})
	}
}

// BenchmarkAll compares All over many live sessions with raw range reads
// of the prefix that build the same map: in pages of the store's page
// size at one revision, as the store reads, and in a single unlimited
// Get. peak-heap-MB is the most the process heap (client and embedded
// server alike) grew above its level before the call, sampled every
// 200 µs; result-MB is the bytes of tokens and values in the result, the
// floor of any All. The 100k case is left out of -short runs.
func BenchmarkAll(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(strconv.Itoa(n/1000)+"k", func(b *testing.B) {
			if n > 10_000 && testing.Short() {
				b.Skip("100k sessions take too long to commit for -short")
			}
			client, ctx := benchServer(b)
			store := etcdstore.New(client)
			prefix := etcdstore.DefaultPrefix
			value := newValue(256)
			tokens := newTokens(n)
			expiry := time.Now().Add(sessionLifetime)
			if err := fill(n, func(i int) error { return store.CommitCtx(ctx, tokens[i], value, expiry) }); err != nil {
				b.Fatal(err)
			}
			const pageSize = 1000 // the store's default

			check := func(b *testing.B, m map[string][]byte) {
				if len(m) != n {
					b.Fatalf("read %d sessions, want %d", len(m), n)
				}
			}
			var paged, single sample
			b.Run("raw-paged", func(b *testing.B) {
				paged = runAll(b, func() (map[string][]byte, error) {
					m := make(map[string][]byte)
					var rev int64
					from := prefix
					end := clientv3.GetPrefixRangeEnd(prefix)
					for {
						resp, err := client.Get(ctx, from, clientv3.WithRange(end), clientv3.WithLimit(pageSize), clientv3.WithRev(rev))
						if err != nil {
							return nil, err
						}
						rev = resp.Header.Revision
						for _, kv := range resp.Kvs {
							m[string(kv.Key[len(prefix):])] = kv.Value
						}
						if !resp.More || len(resp.Kvs) == 0 {
							return m, nil
						}
						from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
					}
				}, check)
			})
			b.Run("raw-single", func(b *testing.B) {
				single = runAll(b, func() (map[string][]byte, error) {
					resp, err := client.Get(ctx, prefix, clientv3.WithPrefix())
					if err != nil {
						return nil, err
					}
					m := make(map[string][]byte, len(resp.Kvs))
					for _, kv := range resp.Kvs {
						m[string(kv.Key[len(prefix):])] = kv.Value
					}
					return m, nil
				}, check)
			})
			b.Run("store", func(b *testing.B) {
				s := runAll(b, func() (map[string][]byte, error) { return store.AllCtx(ctx) }, check)
				reportVersus(b, s, paged, "raw-paged", true)
				reportVersus(b, s, single, "raw-single", false)
			})
		})
	}
}

// runAll times all, one call per operation, reports the peak heap growth
// during a call and the size of the result, and checks each result.
func runAll(b *testing.B, all func() (map[string][]byte, error), check func(*testing.B, map[string][]byte)) sample {
	b.Helper()
	b.ReportAllocs()
	var peak, resultBytes uint64
	var mallocs uint64
	var ms runtime.MemStats
	b.ResetTimer()
	b.StopTimer()
	for range b.N {
		runtime.GC()
		runtime.ReadMemStats(&ms)
		m0 := ms.Mallocs
		sampler := startHeapSampler()
		b.StartTimer()
		m, err := all()
		b.StopTimer()
		peak = max(peak, sampler.stop())
		runtime.ReadMemStats(&ms)
		mallocs += ms.Mallocs - m0
		if err != nil {
			b.Fatal(err)
		}
		check(b, m)
		resultBytes = 0
		for k, v := range m {
			resultBytes += uint64(len(k) + len(v))
		}
	}
	b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MB")
	b.ReportMetric(float64(resultBytes)/(1<<20), "result-MB")
	return sample{n: b.N, elapsed: b.Elapsed(), mallocs: mallocs}
}

// heapSampler samples the bytes of heap objects, live or not yet swept,
// from runtime/metrics, which reads them without stopping the world.
type heapSampler struct {
	done chan struct{}
	peak chan uint64
}

const heapMetric = "/memory/classes/heap/objects:bytes"

func heapObjectBytes(s []metrics.Sample) uint64 {
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// startHeapSampler starts sampling every 200 µs.
func startHeapSampler() *heapSampler {
	h := &heapSampler{done: make(chan struct{}), peak: make(chan uint64)}
	s := []metrics.Sample{{Name: heapMetric}}
	base := heapObjectBytes(s)
	go func() {
		var peak uint64
		t := time.NewTicker(200 * time.Microsecond)
		defer t.Stop()
		for {
			if v := heapObjectBytes(s); v > base {
				peak = max(peak, v-base)
			}
			select {
			case <-h.done:
				h.peak <- peak
				return
			case <-t.C:
			}
		}
	}()
	return h
}

// stop ends the sampling and returns the largest growth seen.
func (h *heapSampler) stop() uint64 {
	close(h.done)
	return <-h.peak
}

// BenchmarkFootprint commits 100k sessions of 256 B that expire in 24 h,
// each to a new token, on a fresh server, with the store and with the
// naive Grant-then-Put, and reports what the server holds afterwards: its
// live leases and its database size (DbSize, and DbSizeInUse, the part
// that is not free pages). ns/op is the time of the 100k commits. Left out
// of -short runs.
func BenchmarkFootprint(b *testing.B) {
	if testing.Short() {
		b.Skip("100k sessions take too long to commit for -short")
	}
	const n = 100_000
	value := newValue(256)
	for _, c := range []struct {
		name   string
		commit func(*clientv3.Client) func(ctx context.Context, token string, b []byte, expiry time.Time) error
	}{
		{"naive", func(c *clientv3.Client) func(context.Context, string, []byte, time.Time) error {
			return (&naiveStore{client: c, prefix: etcdstore.DefaultPrefix}).CommitCtx
		}},
		{"store", func(c *clientv3.Client) func(context.Context, string, []byte, time.Time) error {
			return etcdstore.New(c).CommitCtx
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			ctx := etcdtest.Context(b, benchTimeout)
			var leases int
			var dbSize, dbInUse int64
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				srv := etcdtest.Start(b, etcdtest.WithFsync())
				client := etcdtest.NewClient(b, clientv3.Config{Endpoints: srv.Endpoints()})
				commit := c.commit(client)
				tokens := newTokens(n)
				b.StartTimer()
				if err := fill(n, func(i int) error { return commit(ctx, tokens[i], value, time.Now().Add(sessionLifetime)) }); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				leases = countLeases(b, ctx, client)
				st, err := client.Status(ctx, srv.Endpoints()[0])
				if err != nil {
					b.Fatal(err)
				}
				dbSize, dbInUse = st.DbSize, st.DbSizeInUse
				srv.Stop()
				b.StartTimer()
			}
			b.ReportMetric(float64(leases), "leases")
			b.ReportMetric(float64(dbSize)/(1<<20), "db-MB")
			b.ReportMetric(float64(dbInUse)/(1<<20), "db-inuse-MB")
		})
	}
}

// BenchmarkClientOverhead measures what the store adds to each etcd call
// on the client: the same calls as BenchmarkCommit, BenchmarkFind and
// BenchmarkDelete, on one goroutine, with etcd's KV and lease calls
// answered at once from memory by stubs that allocate nothing. So ns/op
// and allocs/op are the caller's own work, and allocs-over-raw is
// exactly the allocations the store makes beyond the raw call with the
// same key, value and lease option.
func BenchmarkClientOverhead(b *testing.B) {
	kv := &stubKV{}
	client := clientv3.NewCtxClient(context.Background())
	b.Cleanup(func() { client.Close() })
	client.KV = kv
	client.Lease = &stubLease{}
	store := etcdstore.New(client)
	ctx := context.Background()
	token := newToken()
	key := etcdstore.DefaultPrefix + token
	const lease = clientv3.LeaseID(1)
	expiry := time.Now().Add(sessionLifetime)

	for _, size := range valueSizes {
		value := newValue(size.n)
		rawValue := string(value)
		// What Find reads back: the value as the store wrote it.
		kv.record = true
		if err := store.CommitCtx(ctx, token, value, expiry); err != nil {
			b.Fatal(err)
		}
		kv.record = false

		b.Run("Commit/"+size.name, func(b *testing.B) {
			var raw sample
			b.Run("raw-put", func(b *testing.B) {
				raw = runSerial(b, func() error {
					_, err := client.Put(ctx, key, rawValue, clientv3.WithLease(lease))
					return err
				})
			})
			b.Run("store", func(b *testing.B) {
				s := runSerial(b, func() error { return store.CommitCtx(ctx, token, value, expiry) })
				reportOverhead(b, s, raw, "raw-put")
			})
		})
		b.Run("Find/"+size.name, func(b *testing.B) {
			var raw sample
			b.Run("raw-get", func(b *testing.B) {
				raw = runSerial(b, func() error {
					_, err := client.Get(ctx, key)
					return err
				})
			})
			b.Run("store", func(b *testing.B) {
				s := runSerial(b, func() error {
					_, found, err := store.FindCtx(ctx, token)
					if err == nil && !found {
						err = errors.New("find: not found")
					}
					return err
				})
				reportOverhead(b, s, raw, "raw-get")
			})
		})
	}
	b.Run("Delete", func(b *testing.B) {
		var raw sample
		b.Run("raw-delete", func(b *testing.B) {
			raw = runSerial(b, func() error {
				_, err := client.Delete(ctx, key)
				return err
			})
		})
		b.Run("store", func(b *testing.B) {
			s := runSerial(b, func() error { return store.DeleteCtx(ctx, token) })
			reportOverhead(b, s, raw, "raw-delete")
		})
	})
}

// runSerial times op b.N times on one goroutine.
func runSerial(b *testing.B, op func() error) sample {
	b.Helper()
	b.ReportAllocs()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	for range b.N {
		if err := op(); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	runtime.ReadMemStats(&after)
	return sample{n: b.N, elapsed: b.Elapsed(), mallocs: after.Mallocs - before.Mallocs}
}

// stubKV answers Put, Get and Delete at once with fixed responses and
// allocates nothing per call. Get answers with the key and value of the
// last Put made while record is set. The other KV methods are not
// implemented.
type stubKV struct {
	clientv3.KV
	record bool
	put    clientv3.PutResponse
	get    clientv3.GetResponse
	del    clientv3.DeleteResponse
}

func (s *stubKV) Put(_ context.Context, key, val string, _ ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	if s.record {
		s.get.Kvs = []*mvccpb.KeyValue{{Key: []byte(key), Value: []byte(val)}}
	}
	return &s.put, nil
}

func (s *stubKV) Get(context.Context, string, ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	return &s.get, nil
}

func (s *stubKV) Delete(context.Context, string, ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	return &s.del, nil
}

// stubLease grants leases with increasing IDs at once. The other Lease
// methods are not implemented.
type stubLease struct {
	clientv3.Lease
	last atomic.Int64
}

func (l *stubLease) Grant(_ context.Context, ttl int64) (*clientv3.LeaseGrantResponse, error) {
	return &clientv3.LeaseGrantResponse{ID: clientv3.LeaseID(l.last.Add(1)), TTL: ttl}, nil
}

func (l *stubLease) Close() error { return nil }
