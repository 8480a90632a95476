package etcdstore

import (
	"bytes"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// newKey returns a random encryption key.
func newKey(t testing.TB) []byte {
	k := make([]byte, EncryptionKeySize)
	rand.Read(k)
	return k
}

// TestSealOpen: a sealed value opens under its key, with the sealer's
// other keys too, and to its data only: not at another session's key,
// not with another expiry or any byte changed, not without its key. It
// does no I/O.
func TestSealOpen(t *testing.T) {
	k1, k2 := newKey(t), newKey(t)
	old, rotated, dropped := newSealer([][]byte{k1}), newSealer([][]byte{k2, k1}), newSealer([][]byte{k2})
	expiry := time.Unix(1_900_000_000, 5)
	data := []byte("my credit card is 4111")
	v := []byte(old.seal(expiry, "p:tok", data))
	if bytes.Contains(v, data) || len(v) != len(data)+56 {
		t.Fatalf("sealed value %q of %d bytes: want the data hidden, 56 bytes more", v, len(v))
	}
	for _, s := range []*sealer{old, rotated} {
		got, err := s.open(nil, v, "p:tok")
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("open = %q, %v; want the data", got, err)
		}
	}
	if sealedBy(v) != keyID(k1) || keyID(k1) != keyID(append([]byte(nil), k1...)) || keyID(k1) == keyID(k2) {
		t.Errorf("key IDs: value %08x, k1 %08x, k2 %08x", sealedBy(v), keyID(k1), keyID(k2))
	}
	fails := map[string][]byte{"another session's key": v}
	for _, off := range []int{4, 11, 12, 20, 45, len(v) - 1} {
		b := bytes.Clone(v)
		b[off] ^= 1
		fails[string(rune('a'+off))] = b
	}
	for name, b := range fails {
		key := "p:tok"
		if name == "another session's key" {
			key = "p:other"
		}
		if _, err := rotated.open(nil, b, key); !errors.Is(err, errUnopenable) {
			t.Errorf("%s: open = %v, want errUnopenable", name, err)
		}
	}
	if _, err := dropped.open(nil, v, "p:tok"); !errors.Is(err, errUnopenable) || !strings.Contains(err.Error(), "not given") {
		t.Errorf("open without its key = %v, want errUnopenable naming the key", err)
	}
	if _, err := old.open(nil, v[:30], "p:tok"); !errors.Is(err, errUnopenable) {
		t.Errorf("open of a truncated value = %v, want errUnopenable", err)
	}
	// Two seals of the same data differ (random nonces).
	if w := old.seal(expiry, "p:tok", data); w == string(v) {
		t.Error("two seals of the same data are equal")
	}
}

// TestWithEncryptionPanics: a key of another size, one key twice, or no
// key panics with a message that says what was wrong.
func TestWithEncryptionPanics(t *testing.T) {
	k := newKey(t)
	for _, tc := range []struct {
		name string
		keys [][]byte
		want string
	}{
		{"short", [][]byte{k[:16]}, "is 16 bytes, want 32"},
		{"twice", [][]byte{k, bytes.Clone(k)}, "are the same key"},
		{"none", nil, "at least one key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				if r := recover(); r == nil || !strings.Contains(r.(string), tc.want) {
					t.Errorf("recovered %v, want a panic saying %q", r, tc.want)
				}
			}()
			WithEncryption(tc.keys...)
		})
	}
}

// TestEncryptionAtRest: with WithEncryption, etcd holds the session data
// sealed; Find and All read it; a value copied to another session's key,
// or sealed under a key the store lacks, is absent and counted; a
// session stored in the clear before encryption stays readable and is
// sealed at its next commit; after a rotation the old key's sessions
// still read.
func TestEncryptionAtRest(t *testing.T) {
	t.Parallel()
	k1, k2 := newKey(t), newKey(t)
	plainStore, c := newStore(t)
	prefix := plainStore.keys.prefix
	s1 := NewWithPrefix(c, prefix, WithEncryption(k1))
	expiry := time.Now().Add(time.Hour)
	secret := []byte("my credit card is 4111")
	ctx := ctxFor(t)

	if err := plainStore.Commit("legacy", []byte("in the clear"), expiry); err != nil {
		t.Fatal(err)
	}
	if err := s1.Commit("tok", secret, expiry); err != nil {
		t.Fatal(err)
	}
	resp, err := c.Get(ctx, prefix+"tok")
	if err != nil || len(resp.Kvs) != 1 || bytes.Contains(resp.Kvs[0].Value, secret) || !isSealed(resp.Kvs[0].Value) {
		t.Fatalf("etcd holds %q, %v: want the data sealed", resp.Kvs, err)
	}
	if got, found, err := s1.Find("tok"); err != nil || !found || !bytes.Equal(got, secret) {
		t.Fatalf("Find = %q, %v, %v", got, found, err)
	}
	if got, found, err := s1.Find("legacy"); err != nil || !found || string(got) != "in the clear" {
		t.Fatalf("Find of a session in the clear = %q, %v, %v", got, found, err)
	}
	all, err := s1.All()
	if err != nil || len(all) != 2 || !bytes.Equal(all["tok"], secret) {
		t.Fatalf("All = %q, %v", all, err)
	}

	// A value copied to another session's key does not open there.
	if _, err := c.Put(ctx, prefix+"copy", string(resp.Kvs[0].Value)); err != nil {
		t.Fatal(err)
	}
	if _, found, err := s1.Find("copy"); err != nil || found {
		t.Errorf("Find of a copied value = %v, %v; want not found, no error", found, err)
	}
	// A store without encryption does not serve sealed sessions either.
	if _, found, err := plainStore.Find("tok"); err != nil || found {
		t.Errorf("Find of a sealed session without WithEncryption = %v, %v; want not found", found, err)
	}
	if got := s1.Stats().DecryptFailures; got != 1 {
		t.Errorf("DecryptFailures = %d, want 1 (the copy)", got)
	}

	// Rotation: k2 seals, k1 still opens; without k1, k1's session is gone.
	s21 := NewWithPrefix(c, prefix, WithEncryption(k2, k1))
	if got, found, err := s21.Find("tok"); err != nil || !found || !bytes.Equal(got, secret) {
		t.Fatalf("Find after adding k2 = %q, %v, %v", got, found, err)
	}
	if err := s21.Commit("legacy", []byte("sealed now"), expiry); err != nil {
		t.Fatal(err)
	}
	if resp, err := c.Get(ctx, prefix+"legacy"); err != nil || sealedBy(resp.Kvs[0].Value) != keyID(k2) {
		t.Fatalf("the session in the clear after a commit: %v, %v; want it sealed under k2", resp.Kvs, err)
	}
	s2 := NewWithPrefix(c, prefix, WithEncryption(k2))
	if _, found, err := s2.Find("tok"); err != nil || found {
		t.Errorf("Find of k1's session without k1 = %v, %v; want not found", found, err)
	}
	if got, found, err := s2.Find("legacy"); err != nil || !found || string(got) != "sealed now" {
		t.Errorf("Find of k2's session = %q, %v, %v", got, found, err)
	}
	if all, err := s2.All(); err != nil || len(all) != 1 {
		t.Errorf("All without k1 = %d sessions, %v; want k2's only", len(all), err)
	}
	if got := s2.Stats().DecryptFailures; got != 3 {
		t.Errorf("DecryptFailures = %d, want 3 (Find of tok; All: tok, copy)", got)
	}
}

// TestEncryptionKeepsTheRest: with WithEncryption, touches are still
// skipped, a deleted session stays deleted under requests that loaded
// it, the read cache answers, and the principal index hashes principals
// with the key, not SHA-256, across a rotation.
func TestEncryptionKeepsTheRest(t *testing.T) {
	t.Parallel()
	k1, k2 := newKey(t), newKey(t)
	_, c := newStore(t)
	prefix := testPrefix(t)
	s := NewWithPrefix(c, prefix, WithEncryption(k1), WithTouchInterval(time.Minute))
	expiry := time.Now().Add(time.Hour)
	if err := s.Commit("tok", []byte("data"), expiry); err != nil {
		t.Fatal(err)
	}
	if _, found, err := s.Find("tok"); err != nil || !found {
		t.Fatal(found, err)
	}
	if err := s.Commit("tok", []byte("data"), expiry.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if got := s.Stats().TouchesSkipped; got != 1 {
		t.Errorf("TouchesSkipped = %d, want 1", got)
	}
	// Delete, then a commit of a request that loaded the session.
	other := NewWithPrefix(c, prefix, WithEncryption(k1))
	if err := other.Delete("tok"); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit("tok", []byte("changed"), expiry); err != nil {
		t.Fatal(err)
	}
	if _, found, err := other.Find("tok"); err != nil || found {
		t.Errorf("deleted session after a commit in flight: found %v, %v", found, err)
	}

	// The principal index.
	gob := func(user string) []byte { return gobSession(t, expiry, map[string]any{"user": user}) }
	p1 := NewWithPrefix(c, prefix+"u:", WithEncryption(k1), WithPrincipal("user"))
	if err := p1.Commit("a", gob("carol@example.com"), expiry); err != nil {
		t.Fatal(err)
	}
	clear, _ := (*sealer)(nil).indexHash(0, "carol@example.com")
	keys, err := c.Get(ctxFor(t), PrincipalIndexRoot, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil || len(keys.Kvs) != 1 || strings.Contains(string(keys.Kvs[0].Key), clear) {
		t.Fatalf("index %v, %v: want one entry, not the principal's SHA-256 %s", keys.Kvs, err, clear)
	}
	p21 := NewWithPrefix(c, prefix+"u:", WithEncryption(k2, k1), WithPrincipal("user"), WithReadCache())
	defer p21.Close()
	if err := p21.Commit("b", gob("carol@example.com"), expiry); err != nil {
		t.Fatal(err)
	}
	if got, err := p21.FindByPrincipal(ctxFor(t), "carol@example.com"); err != nil || len(got) != 2 {
		t.Fatalf("FindByPrincipal across a rotation = %d sessions, %v; want 2", len(got), err)
	}
	if _, found, err := p21.Find("a"); err != nil || !found {
		t.Fatalf("Find through the read cache = %v, %v", found, err)
	}
	if n, err := p21.DeleteByPrincipal(ctxFor(t), "carol@example.com", "b"); err != nil || n != 1 {
		t.Fatalf("DeleteByPrincipal across a rotation = %d, %v; want 1", n, err)
	}
	if got, err := p21.FindByPrincipal(ctxFor(t), "carol@example.com"); err != nil || len(got) != 1 || got["b"] == nil {
		t.Fatalf("after DeleteByPrincipal: %v, %v; want b only", got, err)
	}
}

// FuzzOpen: no stored value, however altered, makes opening panic, and
// what opens is a clear envelope of the sealed value's expiry.
func FuzzOpen(f *testing.F) {
	key := bytes.Repeat([]byte{7}, EncryptionKeySize)
	s := &EtcdStore{sealer: newSealer([][]byte{key}), stats: &stats{}}
	good := s.sealer.seal(time.Unix(1_900_000_000, 0), "p:tok", []byte("data"))
	f.Add([]byte(good), "p:tok")
	f.Add([]byte(good[:20]), "p:tok")
	f.Add([]byte(tombstone), "p:tok")
	f.Add([]byte(envelopeMagic+"\x02"), "p:")
	f.Fuzz(func(t *testing.T, value []byte, key string) {
		out, err := s.plain(key, value)
		if err == nil && isSealed(value) && (len(out) < envelopeHeader || out[3] != envelopeVersion || !bytes.Equal(out[4:12], value[4:12])) {
			t.Fatalf("%q opened to %q", value, out)
		}
	})
}

// TestEncryptionRollout: a key rolled out in two steps never leaves an
// app server with a session it cannot open. Turning encryption on: with
// WithEncryption(nil, k1), a server writes in the clear and opens what k1
// sealed; rotating: with (k1, k2), a server opens what (k2, k1) sealed.
func TestEncryptionRollout(t *testing.T) {
	t.Parallel()
	k1, k2 := newKey(t), newKey(t)
	_, c := newStore(t)
	prefix := testPrefix(t)
	expiry := time.Now().Add(time.Hour)
	for _, step := range []struct {
		name          string
		before, after [][]byte // the keys of a server not yet switched, of one switched
	}{
		{"on", [][]byte{nil, k1}, [][]byte{k1}},
		{"rotate", [][]byte{k1, k2}, [][]byte{k2, k1}},
	} {
		before := NewWithPrefix(c, prefix+step.name+":", WithEncryption(step.before...))
		after := NewWithPrefix(c, prefix+step.name+":", WithEncryption(step.after...))
		if err := before.Commit("a", []byte("from before"), expiry); err != nil {
			t.Fatal(err)
		}
		if err := after.Commit("b", []byte("from after"), expiry); err != nil {
			t.Fatal(err)
		}
		for _, s := range []*EtcdStore{before, after} {
			for tok, want := range map[string]string{"a": "from before", "b": "from after"} {
				if got, found, err := s.Find(tok); err != nil || !found || string(got) != want {
					t.Errorf("%s: Find(%s) = %q, %v, %v", step.name, tok, got, found, err)
				}
			}
		}
		resp, err := c.Get(ctxFor(t), prefix+step.name+":a")
		if err != nil || len(resp.Kvs) != 1 || isSealed(resp.Kvs[0].Value) != (step.before[0] != nil) {
			t.Errorf("%s: the server not yet switched wrote %q, %v", step.name, resp.Kvs, err)
		}
	}
}
