package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/etcdstore/etcdstore/internal/etcdtest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// adminKey returns a 32-byte encryption key made of b.
func adminKey(b byte) []byte {
	k := make([]byte, EncryptionKeySize)
	for i := range k {
		k[i] = b + byte(i)
	}
	return k
}

// countSessions counts s.Sessions from the start, by key ID.
func countSessions(t *testing.T, s *EtcdStore) (int, map[uint32]int) {
	t.Helper()
	n, by := 0, make(map[uint32]int)
	for info, err := range s.Sessions(etcdtest.Context(t, time.Minute), "") {
		if err != nil {
			t.Fatal(err)
		}
		n++
		by[info.SealedBy]++
	}
	return n, by
}

// TestAdminCalls: Sessions lists what a store wrote; Reseal, interrupted
// and called again, moves every session and its index entry to the first
// key while a store commits meanwhile; CheckIndex finds and fixes a
// missing and a stale entry; EndAll, interrupted and called again, ends
// every session for good.
func TestAdminCalls(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	c := srv.Client(t)
	prefix := t.Name() + ":"
	oldKey, newKey := adminKey(1), adminKey(100)
	app := NewWithPrefix(c, prefix, WithPrincipal("user"), WithEncryption(oldKey))
	admin := NewWithPrefix(c, prefix, WithPrincipal("user"), WithEncryption(newKey, oldKey), WithPageSize(50))
	ctx := etcdtest.Context(t, 2*time.Minute)

	const n = 400
	tokens := make([]string, n)
	for i := range n {
		tokens[i] = fmt.Sprintf("token-%04d", i)
		var user any
		if i%2 == 0 {
			user = fmt.Sprintf("user-%d", i%10)
		}
		if err := app.CommitCtx(ctx, tokens[i], userData(t, user, "m"), time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	if err := app.DeleteCtx(ctx, tokens[0]); err != nil {
		t.Fatal(err)
	}
	got, by := countSessions(t, admin)
	if got != n-1 || by[KeyID(oldKey)] != n-1 {
		t.Fatalf("Sessions: %d sessions, by key %v; want %d under %08x", got, by, n-1, KeyID(oldKey))
	}
	for info, err := range admin.Sessions(ctx, tokens[2]) {
		if err != nil {
			t.Fatal(err)
		}
		if info.Token != tokens[2] || info.Principal != "user-2" || !info.Opened || info.Revision == 0 || info.Size != len(info.Data)+sealedHeaderSize+24+16 {
			t.Errorf("Sessions from %q: first %+v", tokens[2], info)
		}
		break
	}
	// Without the key, a session is still listed, unopened.
	blind := NewWithPrefix(c, prefix, WithPrincipal("user"), WithEncryption(newKey))
	if got, _ := countSessions(t, blind); got != n-1 {
		t.Errorf("Sessions without the key: %d, want %d", got, n-1)
	}

	// Reseal, interrupted after two pages, while a store that seals under
	// the new key commits the odd sessions.
	stop := make(chan struct{})
	var writes atomic.Int64
	var wg sync.WaitGroup
	last := make([]atomic.Value, n)
	writer := NewWithPrefix(c, prefix, WithPrincipal("user"), WithEncryption(newKey, oldKey))
	wg.Go(func() {
		for i := 1; ; i = (i + 2) % n {
			select {
			case <-stop:
				return
			default:
			}
			msg := fmt.Sprintf("w%d", writes.Add(1))
			if err := writer.CommitCtx(ctx, tokens[i], userData(t, nil, msg), time.Now().Add(time.Hour)); err != nil {
				t.Error(err)
				return
			}
			last[i].Store(msg)
		}
	})
	rctx, cancel := context.WithCancel(ctx)
	pages := 0
	first, err := admin.Reseal(rctx, "", func(ResealReport, string) {
		if pages++; pages == 2 {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted Reseal: %v, want context.Canceled", err)
	}
	second, err := admin.Reseal(ctx, "", nil)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if first.Resealed == 0 || first.Resealed+second.Resealed > n-1 || second.Unopenable != 0 {
		t.Errorf("Reseal: first %+v, second %+v", first, second)
	}
	if _, by := countSessions(t, admin); by[KeyID(oldKey)] != 0 {
		t.Errorf("after Reseal, by key: %v", by)
	}
	// Nothing lost: every session holds what was written last.
	for i := 1; i < n; i++ {
		data, ok, err := admin.FindCtx(ctx, tokens[i])
		if err != nil || !ok {
			t.Fatalf("session %d after Reseal: %v, %v", i, ok, err)
		}
		_, values, _ := app.codec.Decode(data)
		if want, _ := last[i].Load().(string); want != "" && values["message"] != want {
			t.Errorf("session %d: message %v, want %q", i, values["message"], want)
		}
	}
	// The index moved: a store with the new key alone finds each user's.
	if got, err := blind.FindByPrincipal(ctx, "user-2"); err != nil || len(got) != n/10 {
		t.Errorf("FindByPrincipal after Reseal: %d, %v; want %d", len(got), err, n/10)
	}

	report, err := admin.CheckIndex(ctx, false)
	if err != nil || report.Stale != 0 || report.Missing != 0 || report.Unverified != 0 {
		t.Fatalf("CheckIndex: %+v, %v", report, err)
	}
	missing, _ := admin.index.entry(KeyID(newKey), "user-2", tokens[2])
	stray, _ := admin.index.entry(KeyID(newKey), "user-2", "no-such-token")
	if _, err := c.Txn(ctx).Then(clientv3.OpDelete(missing), clientv3.OpPut(stray, "")).Commit(); err != nil {
		t.Fatal(err)
	}
	report, err = admin.CheckIndex(ctx, true)
	if err != nil || report.Stale != 1 || report.Missing != 1 || report.Fixed != 2 {
		t.Fatalf("CheckIndex -fix: %+v, %v; want 1 stale, 1 missing, 2 fixed", report, err)
	}
	if report, err = admin.CheckIndex(ctx, false); err != nil || report.Stale+report.Missing != 0 {
		t.Fatalf("CheckIndex after fix: %+v, %v", report, err)
	}

	// EndAll, interrupted after the first page, then again.
	if _, ok, err := writer.FindCtx(ctx, tokens[3]); !ok || err != nil {
		t.Fatalf("find before EndAll: %v, %v", ok, err)
	}
	ectx, cancel := context.WithCancel(ctx)
	ended1, err := admin.EndAll(ectx, "", func(int, string) { cancel() })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted EndAll: %v", err)
	}
	ended2, err := admin.EndAll(ctx, "", nil)
	if err != nil || ended1+ended2 != n-1 {
		t.Fatalf("EndAll: %d then %d, %v; want %d in all", ended1, ended2, err, n-1)
	}
	if again, err := admin.EndAll(ctx, "", nil); err != nil || again != 0 {
		t.Errorf("EndAll a third time: %d, %v; want 0", again, err)
	}
	// A request in flight that loaded a session commits it: it stays ended.
	if err := writer.CommitCtx(ctx, tokens[3], userData(t, "user-3", "back"), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if got, _ := countSessions(t, admin); got != 0 {
		t.Errorf("after EndAll: %d sessions", got)
	}
	if e, ok, err := admin.Ended(ctx, tokens[3]); err != nil || !ok || e.Reason != EndRevoked {
		t.Errorf("Ended after EndAll: %+v, %v, %v", e, ok, err)
	}
	if keys := indexKeys(t, c, admin); len(keys) != 0 {
		t.Errorf("after EndAll, %d index entries remain", len(keys))
	}
}

// TestAdminErrors: Reseal without keys and CheckIndex without an index
// fail at once.
func TestAdminErrors(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	s := NewWithPrefix(srv.Client(t), t.Name()+":")
	ctx := etcdtest.Context(t, time.Minute)
	if _, err := s.Reseal(ctx, "", nil); err == nil {
		t.Error("Reseal without WithEncryption: no error")
	}
	if _, err := s.CheckIndex(ctx, false); !errors.Is(err, ErrNoPrincipal) {
		t.Errorf("CheckIndex without WithPrincipal: %v", err)
	}
	if !ReadCacheSupported("3.5.13") || ReadCacheSupported("3.4.23") {
		t.Error("ReadCacheSupported: wrong for 3.5.13 or 3.4.23")
	}
}
