package etcdstore

import (
	"testing"
	"time"
)

// TestEnded: each way a session ends leaves the reason, and when, where
// Ended reads it; a live session, and a token etcd holds nothing of, have
// none. With encryption and hashed tokens the tombstone holds nothing of
// the session's data.
func TestEnded(t *testing.T) {
	t.Parallel()
	key := make([]byte, EncryptionKeySize)
	s, c := newStore(t, WithPrincipal("user"), WithEncryption(key))
	ctx := ctxFor(t)
	now := time.Now()
	exp := now.Add(time.Hour)
	for _, tok := range []string{"live", "out", "everywhere", "late", "lapsed"} {
		if err := s.CommitCtx(ctx, tok, userData(t, "ann", "secret-"+tok), exp); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CommitCtx(ctx, "lapsed", userData(t, "ann", "secret-lapsed"), now.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteCtx(ctx, "out"); err != nil {
		t.Fatal(err)
	}
	if err := s.CommitCtx(ctx, "late", userData(t, "ann", "x"), now.Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DeleteByPrincipal(ctx, "ann", "live", "lapsed"); err != nil {
		t.Fatal(err)
	}
	s.now = func() time.Time { return now.Add(2 * time.Second) } // "lapsed" expired; its key is still there
	for _, tc := range []struct {
		token  string
		ended  bool
		reason EndReason
	}{
		{"live", false, 0},
		{"never", false, 0},
		{"out", true, EndLogout},
		{"everywhere", true, EndLogoutEverywhere},
		{"late", true, EndExpired},
		{"lapsed", true, EndExpired},
	} {
		e, ok, err := s.Ended(ctx, tc.token)
		if err != nil || ok != tc.ended || e.Reason != tc.reason {
			t.Errorf("Ended(%s) = %+v, %v, %v; want %v, %v", tc.token, e, ok, err, tc.reason, tc.ended)
			continue
		}
		if ok && (e.At.Before(now.Add(-time.Minute)) || e.At.After(now.Add(time.Minute))) {
			t.Errorf("Ended(%s).At = %v, want about %v", tc.token, e.At, now)
		}
		if tc.ended && tc.token != "lapsed" {
			v := rawValue(t, c, s, tc.token)
			if v == nil || len(v.value) != tombstoneSize {
				t.Errorf("%s: etcd holds %v, want a tombstone of %d bytes, which holds no session data", tc.token, v, tombstoneSize)
			}
		}
	}
	if e, _, _ := s.Ended(ctx, "out"); e.Reason.String() != "logged out" {
		t.Errorf("EndLogout.String() = %q", e.Reason.String())
	}
}
