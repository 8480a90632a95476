package etcdstore_test

// Benchmarks of the store against baselines measured in the same run. How
// they are run and kept honest, and the helpers they share:
// bench_harness_test.go.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
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

// BenchmarkFind compares Find of a live session with a raw linearizable
// Get of its key, over hotSessions sessions.
func BenchmarkFind(b *testing.B) {
	for _, size := range valueSizes {
		b.Run(size.name, func(b *testing.B) {
			client, ctx := benchServer(b)
			tokens := newTokens(hotSessions)
			keys := keysOf(tokens)
			value := newValue(size.n)
			store := etcdstore.New(client)
			expiry := time.Now().Add(sessionLifetime)
			if err := fill(len(tokens), func(i int) error { return store.CommitCtx(ctx, tokens[i], value, expiry) }); err != nil {
				b.Fatal(err)
			}

			storeOp := findOp(ctx, "store", store, tokens)
			rawOp := rawGetOp(ctx, client, keys)
			s, base := interleave(b, nil, storeOp, rawOp)
			reportBaselines(b, s, []contender{rawOp}, base)
		})
	}
}

// findOp is a contender that finds one of tokens, which must be live,
// through store.
func findOp(ctx context.Context, name string, store *etcdstore.EtcdStore, tokens []string) contender {
	return contender{name, func(i int) error {
		_, found, err := store.FindCtx(ctx, tokens[i%len(tokens)])
		if err == nil && !found {
			err = fmt.Errorf("find %q: not found", tokens[i%len(tokens)])
		}
		return err
	}}
}

// rawGetOp is the raw linearizable Get of one of keys, which must exist.
func rawGetOp(ctx context.Context, client *clientv3.Client, keys []string) contender {
	return contender{"raw-get", func(i int) error {
		resp, err := client.Get(ctx, keys[i%len(keys)])
		if err == nil && len(resp.Kvs) != 1 {
			err = fmt.Errorf("get %q: %d keys, want 1", keys[i%len(keys)], len(resp.Kvs))
		}
		return err
	}}
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

// BenchmarkAll compares All over many live sessions of 256 B with raw
// reads of the prefix that build the same map: raw-paged in pages of the
// store's page size at one revision, as the store reads; raw-stream with
// etcd 3.7's RangeStream (clientv3 GetStream), which sends the range in
// chunks; and raw-single in one unlimited Get. The calls run one at a
// time, the contenders in turn. result-MB is the bytes of tokens and values
// in the result, the floor of any All. After the timed calls, one more
// call of each contender measures memory (see heapOf): peak-heap-MB is
// how much the process heap, client and embedded server alike, grew at
// most during the store's call, retained-MB how much of it the result
// holds; <name>-peak-heap-MB and <name>-retained-MB are the baselines'.
// The 100k case is left out of -short runs.
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

			contenders := []allContender{
				{"store", func() (map[string][]byte, error) { return store.AllCtx(ctx) }},
				{"raw-paged", func() (map[string][]byte, error) {
					m := make(map[string][]byte)
					var rev int64
					from, end := prefix, clientv3.GetPrefixRangeEnd(prefix)
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
				}},
				{"raw-stream", func() (map[string][]byte, error) {
					ctx, cancel := context.WithCancel(ctx)
					defer cancel()
					stream, err := client.GetStream(ctx, prefix, clientv3.WithPrefix())
					if err != nil {
						return nil, err
					}
					m := make(map[string][]byte)
					for resp := range stream {
						if err := resp.Err(); err != nil {
							return nil, err
						}
						for _, kv := range resp.Kvs {
							m[string(kv.Key[len(prefix):])] = kv.Value
						}
					}
					return m, nil
				}},
				{"raw-single", func() (map[string][]byte, error) {
					resp, err := client.Get(ctx, prefix, clientv3.WithPrefix())
					if err != nil {
						return nil, err
					}
					m := make(map[string][]byte, len(resp.Kvs))
					for _, kv := range resp.Kvs {
						m[string(kv.Key[len(prefix):])] = kv.Value
					}
					return m, nil
				}},
			}
			// One untimed call each, so that no contender pays for a
			// cold start.
			for _, c := range contenders {
				if _, err := c.all(); err != nil {
					b.Fatal(err)
				}
			}

			samples := make([]sample, len(contenders))
			var resultBytes uint64
			// b.Loop runs this function once, so the sessions are
			// committed once; the timer runs during the store's calls
			// only.
			b.ReportAllocs()
			for round := 0; b.Loop(); round++ {
				b.StopTimer()
				for k := range contenders {
					c := (round + k) % len(contenders)
					runtime.GC()
					var ms runtime.MemStats
					runtime.ReadMemStats(&ms)
					mallocs := ms.Mallocs
					if c == 0 {
						b.StartTimer()
					}
					start := time.Now()
					m, err := contenders[c].all()
					samples[c].elapsed += time.Since(start)
					if c == 0 {
						b.StopTimer()
					}
					runtime.ReadMemStats(&ms)
					samples[c].mallocs += ms.Mallocs - mallocs
					samples[c].n++
					if err != nil {
						b.Fatalf("%s: %v", contenders[c].name, err)
					}
					if len(m) != n {
						b.Fatalf("%s: read %d sessions, want %d", contenders[c].name, len(m), n)
					}
					if c == 0 {
						resultBytes = 0
						for k, v := range m {
							resultBytes += uint64(len(k) + len(v))
						}
					}
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(resultBytes)/(1<<20), "result-MB")
			var baselines []contender
			for i, c := range contenders {
				peak, retained, err := heapOf(c.all)
				if err != nil {
					b.Fatalf("%s: %v", c.name, err)
				}
				prefix := ""
				if i > 0 {
					prefix = c.name + "-"
					baselines = append(baselines, contender{name: c.name})
				}
				b.ReportMetric(float64(peak)/(1<<20), prefix+"peak-heap-MB")
				b.ReportMetric(float64(retained)/(1<<20), prefix+"retained-MB")
			}
			reportBaselines(b, samples[0], baselines, samples[1:])
		})
	}
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
			return (&naive.Store{Client: c, Prefix: etcdstore.DefaultPrefix}).CommitCtx
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
				leases = etcdtest.Leases(b, client)
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
// and allocs/op are the caller's own work, and allocs-over-raw-put is
// exactly the allocations the store makes beyond the raw call given a
// ready key and value string. The -from-token baselines are the raw call
// as a caller holding a token and SCS's []byte data must make it, building
// the key and converting the value. The store commits a session it wrote
// before, so its Commit is the conditional Txn of
// raw-conditional-txn-from-token, and its Delete the Put of
// raw-tombstone-put.
func BenchmarkClientOverhead(b *testing.B) {
	kv := newStubKV()
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
			var raw, fromToken, guarded sample
			b.Run("raw-put", func(b *testing.B) {
				raw = runSerial(b, func() error {
					_, err := client.Put(ctx, key, rawValue, clientv3.WithLease(lease))
					return err
				})
			})
			b.Run("raw-put-from-token", func(b *testing.B) {
				fromToken = runSerial(b, func() error {
					_, err := client.Put(ctx, etcdstore.DefaultPrefix+token, string(value), clientv3.WithLease(lease))
					return err
				})
			})
			b.Run("raw-conditional-txn-from-token", func(b *testing.B) {
				guarded = runSerial(b, func() error {
					key := etcdstore.DefaultPrefix + token
					_, err := client.Txn(ctx).
						If(clientv3.Compare(clientv3.ModRevision(key), "=", 0)).
						Then(clientv3.OpPut(key, string(value), clientv3.WithLease(lease))).
						Else(clientv3.OpGet(key)).
						Commit()
					return err
				})
			})
			b.Run("store", func(b *testing.B) {
				s := runSerial(b, func() error { return store.CommitCtx(ctx, token, value, expiry) })
				reportOverhead(b, s, raw, "raw-put")
				reportOverhead(b, s, fromToken, "raw-put-from-token")
				reportOverhead(b, s, guarded, "raw-conditional-txn-from-token")
			})
		})
		b.Run("Find/"+size.name, func(b *testing.B) {
			var raw, fromToken sample
			b.Run("raw-get", func(b *testing.B) {
				raw = runSerial(b, func() error {
					_, err := client.Get(ctx, key)
					return err
				})
			})
			b.Run("raw-get-from-token", func(b *testing.B) {
				fromToken = runSerial(b, func() error {
					_, err := client.Get(ctx, etcdstore.DefaultPrefix+token)
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
				reportOverhead(b, s, fromToken, "raw-get-from-token")
			})
		})
	}
	b.Run("Delete", func(b *testing.B) {
		var raw, tomb sample
		b.Run("raw-delete", func(b *testing.B) {
			raw = runSerial(b, func() error {
				_, err := client.Delete(ctx, key)
				return err
			})
		})
		b.Run("raw-tombstone-put", func(b *testing.B) {
			tomb = runSerial(b, func() error {
				_, err := client.Put(ctx, key, "\x00ES\x01\x00\x00\x00\x00\x00\x00\x00\x00", clientv3.WithIgnoreLease())
				return err
			})
		})
		b.Run("store", func(b *testing.B) {
			s := runSerial(b, func() error { return store.DeleteCtx(ctx, token) })
			reportOverhead(b, s, raw, "raw-delete")
			reportOverhead(b, s, tomb, "raw-tombstone-put")
		})
	})
}
