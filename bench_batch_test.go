package etcdstore_test

import (
	"slices"
	"strconv"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdstore/etcdstore"
)

// benchConcurrency is how many goroutines the batching benchmarks run:
// one request at a time, an app server's usual load, a heavy one.
var benchConcurrency = []int{1, 32, 128}

// timed wraps op so that it records each call's duration in durs, at the
// call's index; reportLatency reports their percentiles.
func timed(durs []time.Duration, op func(i int) error) func(i int) error {
	return func(i int) error {
		start := time.Now()
		err := op(i)
		if i < len(durs) {
			durs[i] = time.Since(start)
		}
		return err
	}
}

// reportLatency reports the 50th, 90th and 99th percentiles of durs, in
// microseconds.
func reportLatency(b *testing.B, durs []time.Duration) {
	b.Helper()
	reportPercentiles(b, "", durs, 50, 90, 99)
}

// reportPercentiles reports the given percentiles of durs, in
// microseconds, as <prefix>p<N>-µs.
func reportPercentiles(b *testing.B, prefix string, durs []time.Duration, ps ...int) {
	b.Helper()
	for _, p := range ps {
		b.ReportMetric(float64(percentile(durs, p).Microseconds()), prefix+"p"+strconv.Itoa(p)+"-µs")
	}
}

// percentile returns the p-th percentile of durs.
func percentile(durs []time.Duration, p int) time.Duration {
	durs = slices.Clone(durs)
	slices.Sort(durs)
	return durs[(len(durs)-1)*p/100]
}

// BenchmarkCommitBatching compares Commit with batching (the default)
// with Commit without it (WithBatching(false)) and with a raw Put onto one
// lease, each rewriting 256 B sessions of its own on 1, 32 and 128
// goroutines, as SCS does on every request with IdleTimeout. p50-µs and
// the like are the batched store's latency percentiles.
func BenchmarkCommitBatching(b *testing.B) {
	for _, n := range benchConcurrency {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			client, ctx := benchServer(b)
			value := newValue(256)
			lease, err := client.Grant(ctx, int64((sessionLifetime+time.Hour)/time.Second))
			if err != nil {
				b.Fatal(err)
			}
			sessions := max(hotSessions, 4*n)
			commitOp := func(name string, store *etcdstore.EtcdStore) contender {
				tokens := newTokens(sessions)
				return contender{name, func(i int) error {
					return store.CommitCtx(ctx, tokens[i%sessions], value, time.Now().Add(sessionLifetime))
				}}
			}
			durs := make([]time.Duration, b.N)
			bstore := etcdstore.New(client)
			defer func() {
				st := bstore.Stats()
				b.ReportMetric(float64(st.BatchedCommits)/float64(max(st.CommitBatches, 1)), "commits/batch")
				b.ReportMetric(float64(st.BatchedCommits)/float64(max(st.Commits, 1)), "batched-share")
			}()
			batched := commitOp("store", bstore)
			batched.op = timed(durs, batched.op)
			unbatched := commitOp("unbatched", etcdstore.New(client, etcdstore.WithBatching(false)))
			rawKeys := keysOf(newTokens(sessions))
			rawOp := contender{"raw-put", func(i int) error {
				_, err := client.Put(ctx, rawKeys[i%sessions], string(value), clientv3.WithLease(lease.ID))
				return err
			}}
			for _, c := range []contender{batched, unbatched, rawOp} {
				var warm sample
				if err := runChunk(&warm, sessions, n, c.op); err != nil {
					b.Fatalf("warm up %s: %v", c.name, err)
				}
			}
			compact(b, ctx, client)
			s, base := interleaveOn(b, n, func() { compact(b, ctx, client) }, batched, unbatched, rawOp)
			reportBaselines(b, s, []contender{unbatched, rawOp}, base)
			reportLatency(b, durs)
		})
	}
}

// BenchmarkFindBatching compares Find with batching with Find without it
// and with a raw linearizable Get, over live sessions of 256 B, on 1, 32
// and 128 goroutines.
func BenchmarkFindBatching(b *testing.B) {
	for _, n := range benchConcurrency {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			client, ctx := benchServer(b)
			tokens := newTokens(hotSessions)
			value := newValue(256)
			writer := etcdstore.New(client)
			expiry := time.Now().Add(sessionLifetime)
			if err := fill(len(tokens), func(i int) error { return writer.CommitCtx(ctx, tokens[i], value, expiry) }); err != nil {
				b.Fatal(err)
			}
			durs := make([]time.Duration, b.N)
			bstore := etcdstore.New(client)
			defer func() {
				st := bstore.Stats()
				b.ReportMetric(float64(st.BatchedReads)/float64(max(st.ReadBatches, 1)), "reads/batch")
				b.ReportMetric(float64(st.BatchedReads)/float64(max(st.Finds, 1)), "batched-share")
			}()
			batched := findOp(ctx, "store", bstore, tokens)
			batched.op = timed(durs, batched.op)
			unbatched := findOp(ctx, "unbatched", etcdstore.New(client, etcdstore.WithBatching(false)), tokens)
			rawOp := rawGetOp(ctx, client, keysOf(tokens))
			s, base := interleaveOn(b, n, nil, batched, unbatched, rawOp)
			reportBaselines(b, s, []contender{unbatched, rawOp}, base)
			reportLatency(b, durs)
		})
	}
}

// BenchmarkBatchRequest times, on one goroutine, the requests a batch
// makes, of 1, 16 and 64 calls: a Txn of nested Txns that each put a
// 256 B session on a lease if its key's mod revision is what was read
// (else get it), and a read-only Txn of Gets. What each call adds to its
// batch bounds what batching can gain (docs/performance.md).
func BenchmarkBatchRequest(b *testing.B) {
	client, ctx := benchServer(b)
	value := string(newValue(256))
	lease, err := client.Grant(ctx, int64((sessionLifetime+time.Hour)/time.Second))
	if err != nil {
		b.Fatal(err)
	}
	keys := keysOf(newTokens(hotSessions))
	revs := make([]int64, len(keys))
	for i, k := range keys {
		resp, err := client.Put(ctx, k, value, clientv3.WithLease(lease.ID))
		if err != nil {
			b.Fatal(err)
		}
		revs[i] = resp.Header.Revision
	}
	for _, n := range []int{1, 16, 64} {
		b.Run("commits/"+strconv.Itoa(n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				ops := make([]clientv3.Op, n)
				for j := range ops {
					k := (i*n + j) % len(keys)
					ops[j] = clientv3.OpTxn(
						[]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(keys[k]), "=", revs[k])},
						[]clientv3.Op{clientv3.OpPut(keys[k], value, clientv3.WithLease(lease.ID))},
						[]clientv3.Op{clientv3.OpGet(keys[k])})
				}
				resp, err := client.Txn(ctx).Then(ops...).Commit()
				if err != nil {
					b.Fatal(err)
				}
				for j, r := range resp.Responses {
					if !r.GetResponseTxn().Succeeded {
						b.Fatalf("commit %d of the batch: compare failed", j)
					}
					revs[(i*n+j)%len(keys)] = resp.Header.Revision
				}
			}
		})
		b.Run("reads/"+strconv.Itoa(n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				ops := make([]clientv3.Op, n)
				for j := range ops {
					ops[j] = clientv3.OpGet(keys[(i*n+j)%len(keys)])
				}
				if _, err := client.Txn(ctx).Then(ops...).Commit(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
