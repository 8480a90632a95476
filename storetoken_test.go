package etcdstore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/alexedwards/scs/v2"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdstore/etcdstore"
	"github.com/etcdstore/etcdstore/internal/etcdtest"
)

// loginWith starts a session of principal "userID" = user through sm and
// returns its token as the app has it.
func loginWith(t *testing.T, sm *scs.SessionManager, user string) string {
	t.Helper()
	ctx, err := sm.Load(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	sm.Put(ctx, "userID", user)
	token, _, err := sm.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return token
}

// TestStoreToken: with HashTokenInStore, etcd holds the key of
// StoreToken(sm, token), never the token; without it, the token.
func TestStoreToken(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	c := srv.Client(t)
	for _, hash := range []bool{true, false} {
		prefix := "st:" + t.Name() + ":" + map[bool]string{true: "hashed:", false: "raw:"}[hash]
		sm := scs.New()
		sm.Store = etcdstore.NewWithPrefix(c, prefix)
		sm.HashTokenInStore = hash
		token := loginWith(t, sm, "ann")
		resp, err := c.Get(etcdtest.Context(t, 10*time.Second), prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			t.Fatal(err)
		}
		want := prefix + etcdstore.StoreToken(sm, token)
		if len(resp.Kvs) != 1 || string(resp.Kvs[0].Key) != want {
			t.Fatalf("HashTokenInStore %v: etcd holds %v, want only %q", hash, resp.Kvs, want)
		}
		if got := etcdstore.StoreToken(sm, token); hash == (got == token) {
			t.Errorf("HashTokenInStore %v: StoreToken = %q for token %q", hash, got, token)
		}
	}
	if got := etcdstore.StoreToken(nil, "tok"); got != "tok" {
		t.Errorf("StoreToken(nil, tok) = %q", got)
	}
}

// TestDeleteByPrincipalRawToken: with HashTokenInStore, DeleteByPrincipal
// given the app's token in except deletes nothing and says why, where it
// would have deleted the session meant to be kept; given StoreToken's, it
// keeps that session and ends the others.
func TestDeleteByPrincipalRawToken(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	store := etcdstore.NewWithPrefix(srv.Client(t), "st:"+t.Name()+":", etcdstore.WithPrincipal("userID"))
	sm := scs.New()
	sm.Store = store
	sm.HashTokenInStore = true
	current := loginWith(t, sm, "ann")
	loginWith(t, sm, "ann")
	ctx := etcdtest.Context(t, 10*time.Second)

	n, err := store.DeleteByPrincipal(ctx, "ann", current)
	if !errors.Is(err, etcdstore.ErrRawToken) || n != 0 {
		t.Fatalf("DeleteByPrincipal with the raw token = %d, %v; want 0 and ErrRawToken", n, err)
	}
	if got, err := store.FindByPrincipal(ctx, "ann"); err != nil || len(got) != 2 {
		t.Fatalf("after the refused delete: %d sessions, %v; want both", len(got), err)
	}
	n, err = store.DeleteByPrincipal(ctx, "ann", etcdstore.StoreToken(sm, current))
	if err != nil || n != 1 {
		t.Fatalf("DeleteByPrincipal with StoreToken = %d, %v; want 1 ended", n, err)
	}
	got, err := store.FindByPrincipal(ctx, "ann")
	if _, kept := got[etcdstore.StoreToken(sm, current)]; err != nil || len(got) != 1 || !kept {
		t.Fatalf("after logging out everywhere else: %d sessions, %v, current kept %v", len(got), err, kept)
	}
}
