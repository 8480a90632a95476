package etcdstore_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdstore/etcdstore"
	"github.com/etcdstore/etcdstore/internal/etcdtest"
	"github.com/etcdstore/etcdstore/internal/exampleapp"
	"github.com/etcdstore/etcdstore/internal/webtest"
)

// TestWhatACopyOfEtcdGives reads etcd as whoever gets hold of a snapshot,
// a backup or read access would: the bytes of Maintenance.Snapshot (what
// etcdctl snapshot save writes) and every key and value of the keyspace,
// after users logged in on the example app, stored secrets, and some
// logged out. With HashTokenInStore and WithEncryption (and
// WithPrincipal), no token, no secret and no principal appears in them,
// nor the principal's SHA-256, and a key of the dump sent back as a
// session cookie gets a new, empty session. Without the two options, all
// of it leaks and the key is a live session, which shows the test can
// fail.
func TestWhatACopyOfEtcdGives(t *testing.T) {
	t.Parallel()
	for _, secure := range []bool{true, false} {
		t.Run(map[bool]string{true: "hashed and encrypted", false: "neither"}[secure], func(t *testing.T) {
			t.Parallel()
			leaks := copyOfEtcd(t, secure)
			if secure && len(leaks) > 0 {
				t.Errorf("a copy of etcd gives away: %s", strings.Join(leaks, "; "))
			}
			if !secure && len(leaks) < 4 {
				t.Errorf("without the options, a copy of etcd gave away only %q; want tokens, secrets, principals, and a live session", leaks)
			}
			t.Logf("%d leaks: %s", len(leaks), strings.Join(leaks, "; "))
		})
	}
}

// copyOfEtcd runs the example app on its own member, with the options if
// secure, and returns what a copy of the member gives away.
func copyOfEtcd(t *testing.T, secure bool) []string {
	srv := etcdtest.Start(t, etcdtest.Own())
	c := srv.Client(t)
	opts := []etcdstore.Option{etcdstore.WithPrincipal(exampleapp.PrincipalKey)}
	if secure {
		key := make([]byte, etcdstore.EncryptionKeySize)
		rand.Read(key)
		opts = append(opts, etcdstore.WithEncryption(key))
	}
	const prefix = "scs:session:"
	sm := exampleapp.NewSessionManager(etcdstore.NewWithPrefix(c, prefix, opts...), 0, time.Hour)
	sm.HashTokenInStore = secure
	app := httptest.NewServer(exampleapp.New(sm))
	t.Cleanup(app.Close)

	users := map[string]string{ // principal: secret
		"carol@example.com": "my credit card is 4111 1111 1111 1111",
		"dave@example.com":  "the door code is 7391",
		"erin@example.com":  "erin's diagnosis",
	}
	var tokens []string
	for user, secret := range users {
		b := webtest.New(t)
		b.Want(app.URL, "/put?m="+url.QueryEscape(secret), "stored\n")
		tokens = append(tokens, b.Token(app.URL)) // before the login renews it
		b.Want(app.URL, "/login?name="+url.QueryEscape(user), "logged in as "+user+"\n")
		tokens = append(tokens, b.Token(app.URL))
		if user == "erin@example.com" {
			b.Want(app.URL, "/logout", "logged out\n")
		}
	}

	ctx := etcdtest.Context(t, 30*time.Second)
	snap, err := c.Maintenance.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	snapshot, err := io.ReadAll(snap)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Get(ctx, "\x00", clientv3.WithFromKey())
	if err != nil {
		t.Fatal(err)
	}
	var keyspace []byte
	for _, kv := range resp.Kvs {
		keyspace = append(append(append(keyspace, kv.Key...), 0), kv.Value...)
	}

	var leaks []string
	find := func(what, needle string) {
		for name, b := range map[string][]byte{"snapshot": snapshot, "keyspace": keyspace} {
			if bytes.Contains(b, []byte(needle)) {
				leaks = append(leaks, what+" in the "+name)
			}
		}
	}
	for i, tok := range tokens {
		find("token "+string(rune('0'+i)), tok)
	}
	for user, secret := range users {
		find("secret of "+user, secret)
		find("principal "+user, user)
		sum := sha256.Sum256([]byte(user))
		find("SHA-256 of "+user, hex.EncodeToString(sum[:16]))
	}
	// Every session key of the dump, sent back as a session cookie.
	for _, kv := range resp.Kvs {
		token, ok := strings.CutPrefix(string(kv.Key), prefix)
		if !ok || etcdstore.IsTombstone(kv.Value) {
			continue
		}
		if got := getWithCookie(t, app.URL+"/get", sm.Cookie.Name, token); got != "\n" {
			leaks = append(leaks, "a key of the dump as a cookie reads "+strings.TrimSpace(got))
		}
	}
	return leaks
}

// getWithCookie requests u with a session cookie of token, as a browser
// that stole it would, and returns the body.
func getWithCookie(t *testing.T, u, name, token string) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.AddCookie(&http.Cookie{Name: name, Value: token})
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
