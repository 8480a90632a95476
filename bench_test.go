package etcdstore_test

// Benchmarks of the store against baselines measured in the same run. How
// they are run and kept honest, and the helpers they share:
// bench_harness_test.go.

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alexedwards/scs/v2"
	"github.com/etcdstore/etcdstore"
	"github.com/etcdstore/etcdstore/internal/etcdtest"
	"github.com/etcdstore/etcdstore/internal/naive"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// BenchmarkCommit compares Commit with a raw Put onto one lease granted
// beforehand, the most any store on etcd can do, and with the naive
// store's Grant-then-Put. Every commit rewrites one of hotSessions
// sessions that all live 24 h, as SCS does on every request with an
// IdleTimeout, after one untimed chunk of each contender has warmed the
// store's lease table up. Each contender has sessions of its own, so that
// none writes over another's. Having written every session in the
// warm-up, the store remembers them, so each commit is the Txn
// conditional on the mod revision it last saw (commit.go), as after a
// request's Find; raw-conditional-txn is that Txn made by hand onto the
// one lease (If the key's mod revision is the last one written, Then put,
// Else get), what etcd charges for the precondition, and raw-guarded-txn
// the guard of earlier releases (If the key exists, Then put).
// leases/1k-commits is how many
// leases the store granted per 1000 commits in the timed rounds (the
// naive store grants 1000).
func BenchmarkCommit(b *testing.B) {
	for _, size := range valueSizes {
		b.Run(size.name, func(b *testing.B) {
			client, ctx := benchServer(b)
			value := newValue(size.n)
			rawValue := string(value)
			lease, err := client.Grant(ctx, int64((sessionLifetime+time.Hour)/time.Second))
			if err != nil {
				b.Fatal(err)
			}
			naive := &naive.Store{Client: client, Prefix: etcdstore.DefaultPrefix}
			store := etcdstore.New(client)

			tokens := newTokens(hotSessions)
			storeOp := contender{"store", func(i int) error {
				return store.CommitCtx(ctx, tokens[i%hotSessions], value, time.Now().Add(sessionLifetime))
			}}
			rawKeys := keysOf(newTokens(hotSessions))
			rawOp := contender{"raw-put", func(i int) error {
				_, err := client.Put(ctx, rawKeys[i%hotSessions], rawValue, clientv3.WithLease(lease.ID))
				return err
			}}
			guardedKeys := keysOf(newTokens(hotSessions))
			guardedOp := contender{"raw-guarded-txn", func(i int) error {
				key := guardedKeys[i%hotSessions]
				_, err := client.Txn(ctx).
					If(clientv3.Compare(clientv3.Version(key), ">", 0)).
					Then(clientv3.OpPut(key, rawValue, clientv3.WithLease(lease.ID))).
					Commit()
				return err
			}}
			// No two goroutines write one key at once: each takes the next
			// index, and there are far more keys than goroutines.
			conditionalKeys := keysOf(newTokens(hotSessions))
			revs := make([]atomic.Int64, hotSessions)
			conditionalOp := contender{"raw-conditional-txn", func(i int) error {
				key, rev := conditionalKeys[i%hotSessions], &revs[i%hotSessions]
				resp, err := client.Txn(ctx).
					If(clientv3.Compare(clientv3.ModRevision(key), "=", rev.Load())).
					Then(clientv3.OpPut(key, rawValue, clientv3.WithLease(lease.ID))).
					Else(clientv3.OpGet(key)).
					Commit()
				switch {
				case err != nil:
					return err
				case resp.Succeeded:
					rev.Store(resp.Header.Revision)
					return nil
				default:
					return fmt.Errorf("raw conditional Txn of %q on revision %d: the key is at another", key, rev.Load())
				}
			}}
			naiveTokens := newTokens(hotSessions)
			naiveOp := contender{"naive", func(i int) error {
				return naive.CommitCtx(ctx, naiveTokens[i%hotSessions], value, time.Now().Add(sessionLifetime))
			}}
			for _, c := range []contender{storeOp, rawOp, guardedOp, conditionalOp, naiveOp} {
				var warm sample
				if err := runChunk(&warm, hotSessions, benchGoroutines, c.op); err != nil {
					b.Fatalf("warm up %s: %v", c.name, err)
				}
			}
			compact(b, ctx, client)
			leases := etcdtest.Leases(b, client)

			s, base := interleave(b, func() { compact(b, ctx, client) }, storeOp, rawOp, guardedOp, conditionalOp, naiveOp)

			// Every naive commit granted one lease; the rest are the store's.
			storeLeases := etcdtest.Leases(b, client) - leases - base[3].n
			b.ReportMetric(float64(storeLeases)*1000/float64(s.n), "leases/1k-commits")
			reportBaselines(b, s, []contender{rawOp, guardedOp, conditionalOp, naiveOp}, base)
			if st := store.Stats(); st.CommitConflicts > 0 {
				b.Fatalf("%d of the store's commits conflicted: another contender wrote its sessions", st.CommitConflicts)
			}
		})
	}
}

// BenchmarkTouch measures a commit that WithTouchInterval turns into no
// write at all: a request that loaded a session and changed nothing, as
// SCS commits it on every request with an IdleTimeout. The session holds
// four values and is committed again with the same expiry; same-bytes
// commits the bytes the store holds; alternative and decoded the same
// values in the other bytes SCS's GobCodec writes for them (random map
// order), in one other order, which the store remembers after comparing
// it once, and in the three others in turn, which it decodes to compare. The baseline is a raw Put onto one lease,
// what each of these commits costs without the option, timed apart.
func BenchmarkTouch(b *testing.B) {
	client, ctx := benchServer(b)
	lease, err := client.Grant(ctx, int64((sessionLifetime+time.Hour)/time.Second))
	if err != nil {
		b.Fatal(err)
	}
	codec := scs.GobCodec{}
	deadline := time.Now().Add(sessionLifetime)
	values := map[string]any{"user": "alice", "visits": 3, "theme": "dark", "csrf": "9f86d081884c7d65"}
	stored, err := codec.Encode(deadline, values)
	if err != nil {
		b.Fatal(err)
	}
	// The other orders: four values encode in four.
	var others [][]byte
	for i := 0; len(others) < 3 && i < 10000; i++ {
		e, _ := codec.Encode(deadline, values)
		if !bytes.Equal(e, stored) && !slices.ContainsFunc(others, func(o []byte) bool { return bytes.Equal(o, e) }) {
			others = append(others, e)
		}
	}
	if len(others) < 3 {
		b.Fatalf("10000 encodings of four values gave %d orders, want 4", len(others)+1)
	}
	tokens := newTokens(hotSessions)
	keys := keysOf(tokens)
	store := etcdstore.New(client, etcdstore.WithTouchInterval(time.Hour))
	expiry := time.Now().Add(sessionLifetime)
	if err := fill(hotSessions, func(i int) error { return store.CommitCtx(ctx, tokens[i], stored, expiry) }); err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		data func(i int) []byte
	}{
		{"same-bytes", func(int) []byte { return stored }},
		// One other order, which the store remembers after the first
		// comparison.
		{"alternative", func(int) []byte { return others[0] }},
		// The other orders in turn: each commit differs from the bytes
		// the store holds and the alternative it remembers, and is
		// decoded.
		{"decoded", func(i int) []byte { return others[(i/hotSessions)%len(others)] }},
	} {
		b.Run(c.name, func(b *testing.B) {
			before, err := client.Get(ctx, "revision", clientv3.WithCountOnly())
			if err != nil {
				b.Fatal(err)
			}
			var s sample
			b.ReportAllocs()
			b.ResetTimer()
			err = runChunk(&s, b.N, benchGoroutines, func(i int) error {
				return store.CommitCtx(ctx, tokens[i%hotSessions], c.data(i), expiry)
			})
			b.StopTimer()
			if err != nil {
				b.Fatal(err)
			}
			after, err := client.Get(ctx, "revision", clientv3.WithCountOnly())
			if err != nil {
				b.Fatal(err)
			}
			if w := after.Header.Revision - before.Header.Revision; w != 0 {
				b.Fatalf("the store wrote %d times", w)
			}
			// The skipped commits are some hundred times faster than the
			// raw Put: interleaving as many of those would take minutes,
			// so the baseline runs touchBaselineOps times, after.
			rawOp := contender{"raw-put", func(i int) error {
				_, err := client.Put(ctx, keys[i%hotSessions], string(stored), clientv3.WithLease(lease.ID))
				return err
			}}
			var raw sample
			if err := runChunk(&raw, touchBaselineOps, benchGoroutines, rawOp.op); err != nil {
				b.Fatal(err)
			}
			reportBaselines(b, s, []contender{rawOp}, []sample{raw})
		})
	}
}

// BenchmarkMemory measures what the store's memory of tokens (tokens.go)
// takes: it commits 100k sessions to 100k tokens through a store on a
// stubbed client (no etcd: only the memory is measured) and reports the
// heap the store then holds beyond an empty one, as bytes-per-token and
// MB-per-100k. default keeps no data; touch-* keep
// the session's data for WithTouchInterval, and touch-alt-* also the
// other bytes of the same session, as after a commit of it in another
// order. Left out of -short runs.
func BenchmarkMemory(b *testing.B) {
	if testing.Short() {
		b.Skip("100k sessions take too long to decode for -short")
	}
	const n = 100_000
	codec := scs.GobCodec{}
	deadline := time.Now().Add(sessionLifetime)
	session := func(size int) []byte {
		// Four values, the message padded until the encoding has size bytes.
		values := map[string]any{"user": "alice", "visits": 3, "theme": "dark", "message": ""}
		base, _ := codec.Encode(deadline, values)
		values["message"] = strings.Repeat("m", max(size-len(base), 0))
		data, _ := codec.Encode(deadline, values)
		return data
	}
	for _, c := range []struct {
		name  string
		size  int
		touch bool
		alt   bool
	}{
		{"default", 256, false, false},
		{"touch-256B", 256, true, false},
		{"touch-alt-256B", 256, true, true},
		{"touch-4KiB", 4 << 10, true, false},
		{"touch-alt-4KiB", 4 << 10, true, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			data := session(c.size)
			var reordered []byte // the same values in other bytes
			for i := 0; reordered == nil && i < 1000; i++ {
				if _, values, err := codec.Decode(data); err == nil {
					if e, _ := codec.Encode(deadline, values); !bytes.Equal(e, data) {
						reordered = e
					}
				}
			}
			if reordered == nil {
				b.Fatal("1000 encodings of four values gave the same bytes")
			}
			tokens := newTokens(n)
			var opts []etcdstore.Option
			if c.touch {
				opts = append(opts, etcdstore.WithTouchInterval(time.Hour))
			}
			expiry := time.Now().Add(sessionLifetime)
			var perToken float64
			for b.Loop() {
				client := clientv3.NewCtxClient(context.Background())
				client.KV = newStubKV()
				client.Lease = &stubLease{}
				before := heapInUse()
				store := etcdstore.New(client, opts...)
				for _, tok := range tokens {
					// A token of its own, as each request's is.
					tok = strings.Clone(tok)
					if err := store.Commit(tok, data, expiry); err != nil {
						b.Fatal(err)
					}
					if c.alt {
						// Compared, not written: kept as the alternative.
						if err := store.Commit(tok, reordered, expiry); err != nil {
							b.Fatal(err)
						}
					}
				}
				perToken = float64(heapInUse()-before) / n
				runtime.KeepAlive(store)
				client.Close()
			}
			b.ReportMetric(perToken, "bytes/token")
			b.ReportMetric(perToken*100_000/(1<<20), "MB/100k")
		})
	}
}

// BenchmarkDelete compares Delete of a live session with a raw Delete of
// its key. Each run first commits, untimed, a session for every delete.
func BenchmarkDelete(b *testing.B) {
	for _, size := range valueSizes {
		b.Run(size.name, func(b *testing.B) {
			client, ctx := benchServer(b)
			value := newValue(size.n)
			store := etcdstore.New(client)
			tokens := newTokens(2 * b.N)
			expiry := time.Now().Add(sessionLifetime)
			if err := fill(len(tokens), func(i int) error { return store.CommitCtx(ctx, tokens[i], value, expiry) }); err != nil {
				b.Fatal(err)
			}
			storeTokens, rawKeys := tokens[:b.N], keysOf(tokens[b.N:])
			compact(b, ctx, client)

			storeOp := contender{"store", func(i int) error { return store.DeleteCtx(ctx, storeTokens[i]) }}
			rawOp := contender{"raw-delete", func(i int) error {
				_, err := client.Delete(ctx, rawKeys[i])
				return err
			}}
			s, base := interleave(b, func() { compact(b, ctx, client) }, storeOp, rawOp)
			reportBaselines(b, s, []contender{rawOp}, base)
		})
	}
}
