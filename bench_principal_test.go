package etcdstore_test

import (
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alexedwards/scs/v2"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdstore/etcdstore"
)

// Benchmarks of the principal index (WithPrincipal).

// userSession is what SCS's GobCodec writes for a session of user that
// also holds 200 bytes of message.
func userSession(b *testing.B, user string) []byte {
	b.Helper()
	data, err := scs.GobCodec{}.Encode(time.Now().Add(sessionLifetime), map[string]any{
		"user": user, "message": string(newValue(100)),
	})
	if err != nil {
		b.Fatal(err)
	}
	return data
}

// BenchmarkCommitWithPrincipal compares a commit with WithPrincipal (one
// Txn that writes the session and its index entry) with a raw Put of the
// same bytes onto one lease, with the guarded Txn of a commit without the
// index, and with the guarded Txn that writes both keys, made by hand. As
// in BenchmarkCommit, every commit rewrites one of hotSessions sessions
// the store wrote in the warm-up, sessions of its own that the baselines
// do not write; their bytes do not change, so the store decodes each
// session's principal once.
func BenchmarkCommitWithPrincipal(b *testing.B) {
	client, ctx := benchServer(b)
	tokens := newTokens(hotSessions)
	rawTokens := newTokens(hotSessions)
	keys := keysOf(rawTokens)
	values := make([][]byte, hotSessions)
	for i := range values {
		values[i] = userSession(b, "user-"+strconv.Itoa(i%200))
	}
	lease, err := client.Grant(ctx, int64((sessionLifetime+time.Hour)/time.Second))
	if err != nil {
		b.Fatal(err)
	}
	store := etcdstore.New(client, etcdstore.WithPrincipal("user"))
	storeOp := contender{"store", func(i int) error {
		return store.CommitCtx(ctx, tokens[i%hotSessions], values[i%hotSessions], time.Now().Add(sessionLifetime))
	}}
	rawOp := contender{"raw-put", func(i int) error {
		_, err := client.Put(ctx, keys[i%hotSessions], string(values[i%hotSessions]), clientv3.WithLease(lease.ID))
		return err
	}}
	guardedOp := contender{"raw-guarded-txn", func(i int) error {
		key := keys[i%hotSessions]
		_, err := client.Txn(ctx).
			If(clientv3.Compare(clientv3.Version(key), ">", 0)).
			Then(clientv3.OpPut(key, string(values[i%hotSessions]), clientv3.WithLease(lease.ID))).
			Commit()
		return err
	}}
	// What etcd charges for the index: the guarded Txn that writes both
	// keys, made by hand.
	indexKeys := make([]string, hotSessions)
	for i, t := range rawTokens {
		indexKeys[i] = etcdstore.PrincipalIndexPrefix(etcdstore.DefaultPrefix) + "0123456789abcdef0123456789abcdef/" + t
	}
	twoKeysOp := contender{"raw-guarded-txn-2-keys", func(i int) error {
		key := keys[i%hotSessions]
		_, err := client.Txn(ctx).
			If(clientv3.Compare(clientv3.Version(key), ">", 0)).
			Then(clientv3.OpPut(key, string(values[i%hotSessions]), clientv3.WithLease(lease.ID)),
				clientv3.OpPut(indexKeys[i%hotSessions], "", clientv3.WithLease(lease.ID))).
			Commit()
		return err
	}}
	for _, c := range []contender{storeOp, rawOp, guardedOp, twoKeysOp} {
		var warm sample
		if err := runChunk(&warm, hotSessions, benchGoroutines, c.op); err != nil {
			b.Fatalf("warm up %s: %v", c.name, err)
		}
	}
	compact(b, ctx, client)
	s, base := interleave(b, func() { compact(b, ctx, client) }, storeOp, rawOp, guardedOp, twoKeysOp)
	reportBaselines(b, s, []contender{rawOp, guardedOp, twoKeysOp}, base)
	if st := store.Stats(); st.CommitConflicts > 0 {
		b.Fatalf("%d of the store's commits conflicted: another contender wrote its sessions", st.CommitConflicts)
	}
}

// BenchmarkByPrincipal times FindByPrincipal and DeleteByPrincipal of a
// user with 5 sessions among 10k and 100k sessions of 2,000 and 20,000
// users, and reports them against SCS's own way (x-iterate): Iterate,
// which reads every session with AllCtx and decodes each, keeping or
// deleting those of the user, timed once. Each delete's sessions are
// committed again under new tokens, untimed, before the next. The 100k
// case is left out of -short runs.
func BenchmarkByPrincipal(b *testing.B) {
	const perUser = 5
	for _, n := range []int{10_000, 100_000} {
		b.Run(strconv.Itoa(n/1000)+"k", func(b *testing.B) {
			if n > 10_000 && testing.Short() {
				b.Skip("100k sessions take too long to commit for -short")
			}
			client, ctx := benchServer(b)
			store := etcdstore.New(client, etcdstore.WithPrincipal("user"))
			users := n / perUser
			user := func(i int) string { return "user-" + strconv.Itoa(i%users) }
			tokens := newTokens(n)
			values := make([][]byte, n)
			for i := range values {
				values[i] = userSession(b, user(i))
			}
			expiry := time.Now().Add(sessionLifetime)
			commit := func(i int) error { return store.CommitCtx(ctx, tokens[i], values[i], expiry) }
			if err := fill(n, commit); err != nil {
				b.Fatal(err)
			}
			// SCS's way, once: every session read and decoded.
			iterate := func(u string, del bool) (time.Duration, int) {
				start := time.Now()
				all, err := store.AllCtx(ctx)
				if err != nil {
					b.Fatal(err)
				}
				found := 0
				for token, data := range all {
					_, values, err := scs.GobCodec{}.Decode(data)
					if err != nil {
						b.Fatal(err)
					}
					if values["user"] == u {
						found++
						if del {
							if err := store.DeleteCtx(ctx, token); err != nil {
								b.Fatal(err)
							}
						}
					}
				}
				return time.Since(start), found
			}

			b.Run("find", func(b *testing.B) {
				took, found := iterate(user(1), false)
				if found != perUser {
					b.Fatalf("Iterate found %d sessions of %s, want %d", found, user(1), perUser)
				}
				i := 0
				for b.Loop() {
					got, err := store.FindByPrincipal(ctx, user(i))
					if err != nil || len(got) != perUser {
						b.Fatalf("FindByPrincipal(%s) = %d sessions, %v", user(i), len(got), err)
					}
					i++
				}
				b.ReportMetric(float64(took.Nanoseconds())/(float64(b.Elapsed().Nanoseconds())/float64(b.N)), "x-iterate")
			})
			b.Run("delete", func(b *testing.B) {
				// A deleted session's token is not used again: the store
				// would refuse to bring it back.
				recommit := func(u int) {
					for j := u; j < n; j += users {
						tokens[j] = newToken()
						if err := commit(j); err != nil {
							b.Fatal(err)
						}
					}
				}
				took, found := iterate(user(2), true)
				if found != perUser {
					b.Fatalf("Iterate deleted %d sessions of %s, want %d", found, user(2), perUser)
				}
				recommit(2)
				i := 0
				for b.Loop() {
					deleted, err := store.DeleteByPrincipal(ctx, user(i))
					if err != nil || deleted != perUser {
						b.Fatalf("DeleteByPrincipal(%s) = %d, %v", user(i), deleted, err)
					}
					b.StopTimer()
					recommit(i % users)
					b.StartTimer()
					i++
				}
				b.ReportMetric(float64(took.Nanoseconds())/(float64(b.Elapsed().Nanoseconds())/float64(b.N)), "x-iterate")
			})
		})
	}
}

// BenchmarkLogin times a login, a commit that gives a new session its
// user, on a store with a session limit (WithSessionLimit) against one
// without, in the same run: "under" with a limit no user reaches (the
// login reads the user's sessions first), "at" with a limit of 2 that
// every login of a user past their second reaches (it ends the oldest in
// the same Txn), each on 32 goroutines; under-serial one login at a
// time. Logins cycle over 2,000 users. recommit-limit times a
// commit that keeps its user, on a store with the limit, against one
// without (recommit): it is not checked.
func BenchmarkLogin(b *testing.B) {
	client, ctx := benchServer(b)
	const users = 2000
	values := make([][]byte, users)
	for i := range values {
		values[i] = userSession(b, "user-"+strconv.Itoa(i))
	}
	// Each login is of a new token, warm-up and runs alike.
	var logins atomic.Int64
	login := func(name string, s *etcdstore.EtcdStore) contender {
		return contender{name, func(i int) error {
			token := "login-" + strconv.FormatInt(logins.Add(1), 36)
			return s.CommitCtx(ctx, token, values[i%users], time.Now().Add(sessionLifetime))
		}}
	}
	plain := etcdstore.NewWithPrefix(client, "plain:", etcdstore.WithPrincipal("user"))
	under := etcdstore.NewWithPrefix(client, "under:", etcdstore.WithPrincipal("user"), etcdstore.WithSessionLimit(1000, etcdstore.EndOldest))
	at := etcdstore.NewWithPrefix(client, "at:", etcdstore.WithPrincipal("user"), etcdstore.WithSessionLimit(2, etcdstore.EndOldest))
	tokens := newTokens(hotSessions)
	recommit := func(name string, s *etcdstore.EtcdStore) contender {
		return contender{name, func(i int) error {
			return s.CommitCtx(ctx, tokens[i%hotSessions], values[i%hotSessions%users], time.Now().Add(sessionLifetime))
		}}
	}
	for _, bc := range []struct {
		name        string
		goroutines  int
		store, base contender
	}{
		{"under", benchGoroutines, login("login-limit-under", under), login("login", plain)},
		{"at", benchGoroutines, login("login-limit-at", at), login("login", plain)},
		{"under-serial", 1, login("login-limit-under", under), login("login", plain)},
		{"recommit", benchGoroutines, recommit("recommit-limit", under), recommit("recommit", plain)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for _, c := range []contender{bc.store, bc.base} {
				var warm sample
				if err := runChunk(&warm, hotSessions, benchGoroutines, c.op); err != nil {
					b.Fatalf("warm up %s: %v", c.name, err)
				}
			}
			s, base := interleaveOn(b, bc.goroutines, func() { compact(b, ctx, client) }, bc.store, bc.base)
			reportBaselines(b, s, []contender{bc.base}, base)
		})
	}
}
