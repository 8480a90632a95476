package etcdstore_test

// The benchmarks' harness: how the store and its baselines are run and
// measured in the same run, and the helpers every benchmark shares.
//
// Each benchmark but BenchmarkClientOverhead starts its own embedded etcd
// member on loopback, with fsync on as in production, and one client of
// it that all goroutines share, as an application shares its client.
//
// How the ratios are kept honest on a shared machine: the store and its
// baselines (a raw etcd call; the naive store of internal/naive) run
// interleaved, on the same server, client, keys and values. A round runs
// a chunk of chunkOps operations of each contender on benchGoroutines
// goroutines, starting with a different contender each round, and rounds
// go on until the store has done b.N operations. The framework's timer
// runs only during the store's chunks, so ns/op and allocs/op are the
// store's; every chunk is also timed on its own, and the ratios come from
// the sums: x-raw-put is the raw Put's time per operation over the
// store's, so 1 means the store matches the raw call's throughput and 0.5
// that it reaches half of it. Load from other processes that comes and
// goes over seconds then falls on every contender alike rather than on
// whichever ran at the time; what is left is noise, so run with -count 5
// or more and take medians (benchstat). b.RunParallel cannot switch
// contenders in the middle of a run, hence the runner's own goroutines.
//
// allocs/op counts every allocation in the process, the embedded
// server's included; allocs-over-raw-put and the like are the store's
// allocations per operation minus the raw call's, counted the same way,
// so the server's share, alike for both, mostly cancels.
// BenchmarkClientOverhead counts the store's own allocations exactly,
// with etcd's KV and lease calls stubbed out.
//
// The short set, for CI, runs in under a minute on two cores once built:
//
//	go test -short -run '^$' -bench . -benchtime=100x ./...
//
// The full set adds All over 100k sessions and the server footprint of
// 100k commits, and takes a few minutes per count:
//
//	go test -run '^$' -bench . -count 5 -timeout 120m .

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/etcdstore/etcdstore"
	"github.com/etcdstore/etcdstore/internal/etcdtest"
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"
)

const (
	// benchGoroutines is how many goroutines run each contender's
	// operations: an application server's concurrent requests.
	benchGoroutines = 32
	// chunkOps is how many operations a contender runs before the next
	// one takes over.
	chunkOps = 16 * benchGoroutines
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

// contender is one way of doing the benchmarked operation: op(i) does its
// i-th operation, counting from 0.
type contender struct {
	name string
	op   func(i int) error
}

// sample is what the chunks of one contender measured.
type sample struct {
	n       int
	elapsed time.Duration
	mallocs uint64
}

func (s sample) nsPerOp() float64 { return float64(s.elapsed.Nanoseconds()) / float64(s.n) }

func (s sample) allocsPerOp() float64 { return float64(s.mallocs) / float64(s.n) }

// interleave runs b.N operations of store and as many of each baseline,
// in rounds as the file's comment describes, calling between, when not
// nil, after each round. The framework's timer runs during the store's
// chunks only. It returns the samples of the store and of the baselines.
func interleave(b *testing.B, between func(), store contender, baselines ...contender) (sample, []sample) {
	b.Helper()
	return interleaveOn(b, benchGoroutines, between, store, baselines...)
}

// interleaveOn is interleave on the given number of goroutines, in
// chunks of at least 8 operations a goroutine.
func interleaveOn(b *testing.B, goroutines int, between func(), store contender, baselines ...contender) (sample, []sample) {
	b.Helper()
	b.ReportAllocs()
	chunk := max(chunkOps, 8*goroutines)
	all := append([]contender{store}, baselines...)
	samples := make([]sample, len(all))
	b.ResetTimer()
	b.StopTimer()
	for round := 0; samples[0].n < b.N; round++ {
		n := min(chunk, b.N-samples[0].n)
		for k := range all {
			c := (round + k) % len(all)
			if c == 0 {
				b.StartTimer()
			}
			err := runChunk(&samples[c], n, goroutines, all[c].op)
			if c == 0 {
				b.StopTimer()
			}
			if err != nil {
				b.Fatalf("%s: %v", all[c].name, err)
			}
		}
		if between != nil {
			between()
		}
	}
	return samples[0], samples[1:]
}

// runChunk runs the next n operations of op on up to goroutines
// goroutines and adds their time and allocations to s.
func runChunk(s *sample, n, goroutines int, op func(i int) error) error {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	mallocs := ms.Mallocs
	first := s.n
	var next atomic.Int64
	var g errgroup.Group
	start := time.Now()
	for range min(goroutines, n) {
		g.Go(func() error {
			for {
				k := int(next.Add(1) - 1)
				if k >= n {
					return nil
				}
				if err := op(first + k); err != nil {
					return err
				}
			}
		})
	}
	err := g.Wait()
	s.elapsed += time.Since(start)
	runtime.ReadMemStats(&ms)
	s.mallocs += ms.Mallocs - mallocs
	s.n += n
	return err
}

// reportBaselines reports, for each baseline, its time per operation as
// <name>-ns/op and the store's throughput as a multiple of its as
// x-<name>; for the raw etcd calls (names that begin with "raw"), also
// the store's allocations per operation beyond its as
// allocs-over-<name>.
func reportBaselines(b *testing.B, store sample, baselines []contender, samples []sample) {
	b.Helper()
	for i, c := range baselines {
		base := samples[i]
		b.ReportMetric(base.nsPerOp(), c.name+"-ns/op")
		b.ReportMetric(base.nsPerOp()/store.nsPerOp(), "x-"+c.name)
		if strings.HasPrefix(c.name, "raw") {
			b.ReportMetric(store.allocsPerOp()-base.allocsPerOp(), "allocs-over-"+c.name)
		}
	}
}

// reportOverhead reports the time and allocations per operation that s
// takes beyond base, the raw call, as ns-over-<name> and
// allocs-over-<name>.
func reportOverhead(b *testing.B, s, base sample, name string) {
	b.Helper()
	if base.n == 0 {
		return
	}
	b.ReportMetric(s.nsPerOp()-base.nsPerOp(), "ns-over-"+name)
	b.ReportMetric(s.allocsPerOp()-base.allocsPerOp(), "allocs-over-"+name)
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

// keysOf returns the store's keys of tokens.
func keysOf(tokens []string) []string {
	keys := make([]string, len(tokens))
	for i, t := range tokens {
		keys[i] = etcdstore.DefaultPrefix + t
	}
	return keys
}

// fill runs commit(i) for every i in [0, n) on fillGoroutines goroutines.
func fill(n int, commit func(i int) error) error {
	var s sample
	return runChunk(&s, n, fillGoroutines, commit)
}

// compact compacts the keyspace at its current revision and waits until
// the backend has dropped the old revisions, so that the history the
// contenders run on stays short and alike.
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

// touchBaselineOps is how many raw Puts BenchmarkTouch times.
const touchBaselineOps = 4 * chunkOps

// heapInUse returns the bytes of live heap objects after two collections.
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	return heapObjectBytes([]metrics.Sample{{Name: heapMetric}})
}

// allContender is one way of reading every session.
type allContender struct {
	name string
	all  func() (map[string][]byte, error)
}

// heapOf calls all once, untimed, with the garbage collector set to run
// whenever the heap has grown by 10%, so that the heap's size follows the
// memory in use rather than garbage awaiting collection. It returns the
// most the heap grew above its size before the call, sampled every
// 200 µs, and what it still held after the call and a collection: the
// result.
func heapOf(all func() (map[string][]byte, error)) (peak, retained uint64, err error) {
	defer debug.SetGCPercent(debug.SetGCPercent(10))
	s := []metrics.Sample{{Name: heapMetric}}
	// Two collections: the first moves sync.Pool contents, such as the
	// buffers of an earlier call, to the victim cache, the second frees
	// them.
	runtime.GC()
	runtime.GC()
	base := heapObjectBytes(s)
	sampler := startHeapSampler()
	m, err := all()
	peak = sampler.stop()
	runtime.GC()
	runtime.GC()
	if after := heapObjectBytes(s); after > base {
		retained = after - base
	}
	runtime.KeepAlive(m)
	return peak, retained, err
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

// stubKV answers Put, Get, Delete, Do and Txn at once with fixed responses
// and allocates nothing per call. Get answers with the key and value of
// the last Put, alone or first in a Txn's Then branch, made while record
// is set; every Txn succeeds. The other KV methods are not implemented.
type stubKV struct {
	clientv3.KV
	record bool
	put    clientv3.PutResponse
	get    clientv3.GetResponse
	del    clientv3.DeleteResponse
	txn    stubTxn
}

// newStubKV returns a stubKV whose responses carry a header, as etcd's
// always do.
func newStubKV() *stubKV {
	h := &etcdserverpb.ResponseHeader{}
	s := &stubKV{}
	s.put.Header, s.get.Header, s.del.Header, s.txn.resp.Header = h, h, h, h
	s.txn.kv = s
	return s
}

func (s *stubKV) Txn(context.Context) clientv3.Txn { return &s.txn }

// stubTxn is a Txn whose compares always hold.
type stubTxn struct {
	kv   *stubKV
	resp clientv3.TxnResponse
}

func (t *stubTxn) If(...clientv3.Cmp) clientv3.Txn { return t }

func (t *stubTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	if t.kv.record && len(ops) > 0 && ops[0].IsPut() {
		t.kv.Put(context.Background(), string(ops[0].KeyBytes()), string(ops[0].ValueBytes()))
	}
	return t
}

func (t *stubTxn) Else(...clientv3.Op) clientv3.Txn { return t }

func (t *stubTxn) Commit() (*clientv3.TxnResponse, error) {
	t.resp.Succeeded = true
	return &t.resp, nil
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

// Do answers a put or a delete as Put and Delete do.
func (s *stubKV) Do(ctx context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	if op.IsPut() {
		resp, err := s.Put(ctx, string(op.KeyBytes()), string(op.ValueBytes()))
		return resp.OpResponse(), err
	}
	resp, err := s.Delete(ctx, string(op.KeyBytes()))
	return resp.OpResponse(), err
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
