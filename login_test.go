package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/api/v3/version"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/etcdstore/etcdstore/internal/etcdtest"
)

func TestReloginRefused(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		version string
		want    bool
	}{
		{"3.4.23", true}, {"3.4.40", true}, {"3.3.27", true}, {"2.3.8", true},
		{"3.5.0", false}, {"3.5.35", false}, {"3.6.16", false}, {"3.7.3", false}, {"4.0.0", false},
		{"3.4.0-rc.1", true}, {"", false}, {"3", false}, {"x.y.z", false},
	} {
		if got := reloginRefused(tc.version); got != tc.want {
			t.Errorf("reloginRefused(%q) = %v, want %v", tc.version, got, tc.want)
		}
	}
}

// TestDiagnose: etcd refuses the token only when every read timed out
// while every endpoint answered its status, one with an etcd before 3.5;
// a read that went through, or failed otherwise, clears the diagnosis; a
// silent endpoint leaves it as it was.
func TestDiagnose(t *testing.T) {
	t.Parallel()
	timeout := fmt.Errorf("attempt: %w", context.DeadlineExceeded)
	answered := func(ep, version string) endpointStatus {
		return endpointStatus{endpoint: ep, version: version, answered: true}
	}
	silent := endpointStatus{endpoint: "http://c:2379"}
	for i, tc := range []struct {
		reads     []error
		statuses  []endpointStatus
		refused   string // the endpoint named, or ""
		wantKnown bool
	}{
		{reads: nil, wantKnown: false},
		{reads: []error{nil}, wantKnown: true},
		{reads: []error{timeout, nil}, wantKnown: true},
		{reads: []error{rpctypes.ErrPermissionDenied}, wantKnown: true},
		{reads: []error{timeout}, statuses: nil, wantKnown: false},
		{reads: []error{timeout}, statuses: []endpointStatus{silent}, wantKnown: false},
		{reads: []error{timeout, timeout}, statuses: []endpointStatus{answered("http://a:2379", "3.4.23"), silent}, wantKnown: false},
		{reads: []error{timeout}, statuses: []endpointStatus{answered("http://a:2379", "3.6.16")}, wantKnown: true},
		{reads: []error{timeout}, statuses: []endpointStatus{answered("http://a:2379", "3.4.23")}, refused: "http://a:2379", wantKnown: true},
		{reads: []error{timeout, timeout}, statuses: []endpointStatus{answered("http://a:2379", "3.5.0"), answered("http://b:2379", "3.4.23")}, refused: "http://b:2379", wantKnown: true},
	} {
		refused, known := diagnose(tc.reads, tc.statuses)
		got := ""
		if refused != nil {
			got = refused.endpoint
		}
		if got != tc.refused || known != tc.wantKnown {
			t.Errorf("#%d: diagnose(%v, %v) = refused at %q, known %v; want %q, %v", i, tc.reads, tc.statuses, got, known, tc.refused, tc.wantKnown)
		}
	}
}

// TestKeepAliveRuns: a store on a client that logs in reads its prefix
// every WithAuthKeepAlive interval, and Close stops it; a store on a
// client that does not log in starts nothing (TestMain's leak check
// holds it to that).
func TestKeepAliveRuns(t *testing.T) {
	t.Parallel()
	const prefix = "t/keepalive/app:"
	app := readWriteUser("app", "app-password", prefix)
	srv, _ := startAuthEtcd(t, app)
	s := NewWithPrefix(authClient(t, srv, app.name, app.password), prefix, WithAuthKeepAlive(20*time.Millisecond))
	if s.login == nil {
		t.Fatal("a store on a client that logs in has no keep-alive")
	}
	deadline := time.Now().Add(10 * time.Second)
	for s.login.rounds.Load() < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("%d keep-alive rounds in 10 s at a 20 ms interval", s.login.rounds.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.Close()
	n := s.login.rounds.Load()
	time.Sleep(100 * time.Millisecond)
	if m := s.login.rounds.Load(); m != n {
		t.Errorf("keep-alive rounds went on after Close: %d, then %d", n, m)
	}
	if s.login.refused.Load() != nil {
		t.Errorf("diagnosed a refused token on a working login: %v", s.login.refused.Load())
	}
	if plain := NewWithPrefix(srv.Client(t), prefix); plain.login != nil {
		t.Error("a store on a client that does not log in has a keep-alive")
	}
}

// TestIdleLogin: on an etcd whose tokens expire after 2 s unused, an app
// idle for longer keeps working: its store's keep-alive keeps the token
// in use. (etcd 3.7, embedded here, would also let the client log in
// again: TestIdleLoginRealServers shows etcd 3.4, which does not.)
func TestIdleLogin(t *testing.T) {
	t.Parallel()
	const prefix = "t/idle/app:"
	app := readWriteUser("app", "app-password", prefix)
	srv := etcdtest.Start(t, func(cfg *embed.Config) {
		cfg.AuthToken = "simple"
		cfg.AuthTokenTTL = 2
		cfg.BcryptCost = authBcryptCost
	})
	setUpAuth(t, srv.Client(t), app)
	s := NewWithPrefix(authClient(t, srv, app.name, app.password), prefix, WithAuthKeepAlive(500*time.Millisecond))
	t.Cleanup(func() { s.Close() })
	idleLogin(t, s, 3*time.Second, true)
}

// idleLogin commits a session through s, waits idle, then finds and
// commits it again, which must work within 2 s, well within the store's
// timeout (want), or returns the error of the Find (!want).
func idleLogin(t *testing.T, s *EtcdStore, idle time.Duration, want bool) error {
	t.Helper()
	ctx := context.Background()
	expiry := time.Now().Add(time.Hour)
	if err := s.CommitCtx(ctx, "tok", []byte("data"), expiry); err != nil {
		t.Fatalf("Commit before the idle: %v", err)
	}
	time.Sleep(idle)
	start := time.Now()
	got, found, err := s.FindCtx(ctx, "tok")
	if !want {
		return err
	}
	if err != nil || !found || string(got) != "data" {
		t.Fatalf("Find after %v idle = %q, %v, %v", idle, got, found, err)
	}
	if err := s.CommitCtx(ctx, "tok", []byte("data 2"), expiry); err != nil {
		t.Fatalf("Commit after %v idle: %v", idle, err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Find and Commit after %v idle took %v", idle, took)
	}
	return nil
}

// TestIdleLoginRealServers, against each etcd daemon of
// etcdtest.Daemons (Debian's etcd 3.4 by default, and, in CI, 3.6),
// started with --auth-token-ttl 3: an app idle for 4.5 s keeps working
// with the keep-alive at 1 s. Without it (an interval of an hour), idle
// for 6 s, etcd 3.4 refuses the expired token and the client's logins with it, every
// call times out, and the calls' errors say so, wrapping
// rpctypes.ErrInvalidAuthToken, counted as Errors.Auth; later servers let
// the client log in again.
func TestIdleLoginRealServers(t *testing.T) {
	t.Parallel()
	for _, bin := range etcdtest.Daemons(t) {
		endpoint, version := etcdtest.StartDaemon(t, bin, "--auth-token-ttl", "3")
		const prefix = "t/idle/app:"
		app := readWriteUser("app", "app-password", prefix)
		setUpAuth(t, etcdtest.NewClient(t, clientv3.Config{Endpoints: []string{endpoint}}), app)
		newClient := func(t *testing.T) *clientv3.Client {
			return etcdtest.NewClient(t, clientv3.Config{Endpoints: []string{endpoint}, Username: app.name, Password: app.password})
		}
		t.Run(version+"/keep-alive", func(t *testing.T) {
			t.Parallel()
			s := NewWithPrefix(newClient(t), prefix+"a:", WithAuthKeepAlive(time.Second))
			t.Cleanup(func() { s.Close() })
			idleLogin(t, s, 4500*time.Millisecond, true)
		})
		t.Run(version+"/no keep-alive", func(t *testing.T) {
			t.Parallel()
			s := NewWithPrefix(newClient(t), prefix+"b:", WithAuthKeepAlive(time.Hour), WithTimeout(3*time.Second))
			t.Cleanup(func() { s.Close() })
			if !reloginRefused(version) || clientClearsToken() {
				idleLogin(t, s, 4500*time.Millisecond, true)
				return
			}
			// 6 s: etcd 3.4 deletes expired tokens on a 1 s tick, so a
			// token of 3 s may live 4 s and more.
			err := idleLogin(t, s, 6*time.Second, false)
			for _, want := range []string{"etcdstore: find: ", "etcd " + version + " at " + endpoint + ` refuses the auth token of user "app"`, "--auth-token-ttl", "make a new etcd client", "WithAuthKeepAlive"} {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("Find after the token expired = %v, want an error that says %q", err, want)
				}
			}
			if !errors.Is(err, rpctypes.ErrInvalidAuthToken) || !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Find after the token expired = %v, want it to wrap rpctypes.ErrInvalidAuthToken and context.DeadlineExceeded", err)
			}
			if e := s.Stats().Errors; e.Auth != 1 || e.Timeout != 0 {
				t.Errorf("Stats().Errors = %+v, want the error counted as Auth", e)
			}
			t.Log(err)
		})
	}
}

// TestAuthErrorsSayWhatToFix: a refusal for permission names the user,
// the store's prefix and, with WithPrincipal, its index's prefix, and
// what to grant; a client that does not log in is told to; each counts
// as Errors.Auth.
func TestAuthErrorsSayWhatToFix(t *testing.T) {
	t.Parallel()
	const prefix = "t/hint/app:"
	// The role grants the sessions' prefix but not the index's.
	app := readWriteUser("app", "app-password", prefix)
	srv, _ := startAuthEtcd(t, app)
	ctx := etcdtest.Context(t, 30*time.Second)
	s := NewWithPrefix(authClient(t, srv, app.name, app.password), prefix, WithPrincipal("user"))
	t.Cleanup(func() { s.Close() })
	data := userData(t, "ann", "hi")
	err := s.CommitCtx(ctx, "tok", data, time.Now().Add(time.Hour))
	want := `etcd user "app" may not read or write a key the store needs: grant its role readwrite on the store's prefix "t/hint/app:" and its principal index's prefix "etcdstore/principal/11:t/hint/app:/" (etcdctl role grant-permission ROLE readwrite --prefix=true PREFIX)`
	if !errors.Is(err, rpctypes.ErrPermissionDenied) || !strings.HasPrefix(err.Error(), "etcdstore: commit: ") || !strings.Contains(err.Error(), want) {
		t.Errorf("Commit with the index outside the role = %v\nwant an etcdstore: commit: error wrapping rpctypes.ErrPermissionDenied that says %q", err, want)
	}

	anon := NewWithPrefix(srv.Client(t), prefix)
	_, _, err = anon.FindCtx(ctx, "tok")
	if want := "the client logs in as no one: give clientv3.Config a Username and Password"; !errors.Is(err, rpctypes.ErrUserEmpty) || !strings.Contains(err.Error(), want) {
		t.Errorf("Find without a login = %v, want an error wrapping rpctypes.ErrUserEmpty that says %q", err, want)
	}
	if a, b := s.Stats().Errors, anon.Stats().Errors; a.Auth != 1 || b.Auth != 1 {
		t.Errorf("Stats().Errors = %+v and %+v, want each refusal counted as Auth", a, b)
	}
}

// TestConfigPanics: a prefix that overlaps the stores' own keys,
// WithPrincipal(""), and a nil context are programming errors, reported
// at once by a panic that names the package and says what to do.
func TestConfigPanics(t *testing.T) {
	t.Parallel()
	client := new(clientv3.Client)
	s := NewWithPrefix(client, "p:")
	var none context.Context // nil
	for _, tc := range []struct {
		name string
		f    func()
		want string
	}{
		{"empty prefix", func() { NewWithPrefix(client, "") }, "etcdstore: empty prefix"},
		{"prefix covering the indexes", func() { NewWithPrefix(client, "etcdstore/") }, `etcdstore: prefix "etcdstore/" covers the principal indexes under "etcdstore/principal/"`},
		{"prefix e", func() { NewWithPrefix(client, "e") }, `covers the principal indexes`},
		{"prefix under the indexes", func() { NewWithPrefix(client, "etcdstore/principal/12:scs:session:/") }, `lies under "etcdstore/principal/"`},
		{"prefix covering the compactor's key", func() { NewWithPrefix(client, "etcdstore/compactor") }, `covers the compactor's key "etcdstore/compactor"`},
		{`WithPrincipal("")`, func() { WithPrincipal("") }, `etcdstore: WithPrincipal(""): name the session key that holds the principal`},
		{"FindCtx(nil)", func() { s.FindCtx(none, "t") }, "etcdstore: FindCtx called with a nil Context"},
		{"CommitCtx(nil)", func() { s.CommitCtx(none, "t", nil, time.Now()) }, "etcdstore: CommitCtx called with a nil Context"},
		{"DeleteCtx(nil)", func() { s.DeleteCtx(none, "t") }, "etcdstore: DeleteCtx called with a nil Context"},
		{"AllCtx(nil)", func() { s.AllCtx(none) }, "etcdstore: AllCtx called with a nil Context"},
		{"FindByPrincipal(nil)", func() { s.FindByPrincipal(none, "p") }, "etcdstore: FindByPrincipal called with a nil Context"},
		{"DeleteByPrincipal(nil)", func() { s.DeleteByPrincipal(none, "p") }, "etcdstore: DeleteByPrincipal called with a nil Context"},
		{"ReadCacheReady(nil)", func() { s.ReadCacheReady(none) }, "etcdstore: ReadCacheReady called with a nil Context"},
		{"RunCompactor(nil)", func() { RunCompactor(none, client, time.Second, nil) }, "etcdstore: RunCompactor called with a nil Context"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				r := recover()
				if msg := fmt.Sprint(r); r == nil || !strings.Contains(msg, tc.want) {
					t.Errorf("recovered %v, want a panic saying %q", r, tc.want)
				}
			}()
			tc.f()
		})
	}
	// Prefixes beside the stores' own keys are fine.
	for _, p := range []string{"etcdstore/sessions/", "etcdstore/compactor/", "etcdstore/principals/", "scs:session:"} {
		if err := CheckPrefix(p); err != nil {
			t.Errorf("CheckPrefix(%q) = %v, want nil", p, err)
		}
	}
}

// clientClearsToken reports whether the etcd client the tests are built
// with clears its expired token before it logs in again: v3.5 does (etcd
// PR #12549), so its logins go through on etcd 3.4 too; v3.6 and later
// send the expired token with the login.
func clientClearsToken() bool {
	return strings.HasPrefix(version.Version, "3.5.")
}

// compactNeedsRoot reports whether an etcd server of version v compacts
// only for a user with the root role: 3.5.31, 3.6.9, 3.7 and later.
func compactNeedsRoot(v string) bool {
	var major, minor, patch int
	if _, err := fmt.Sscanf(v, "%d.%d.%d", &major, &minor, &patch); err != nil {
		return true
	}
	switch {
	case major != 3:
		return major > 3
	case minor == 5:
		return patch >= 31
	case minor == 6:
		return patch >= 9
	default:
		return minor > 6
	}
}

// TestCompactorRefusals: RunCompactor's refusals say what to fix: a user
// that may not write CompactorKey is told to grant it, and one that may
// but lacks the root role, which etcd 3.7 (embedded here) requires to
// compact, is told so.
func TestCompactorRefusals(t *testing.T) {
	t.Parallel()
	noKey := readWriteUser("nokey", "nokey-password", "t/compact/")
	withKey := authUser{name: "withkey", password: "withkey-password", perm: clientv3.PermissionType(clientv3.PermReadWrite), key: CompactorKey}
	srv, _ := startAuthEtcd(t, noKey, withKey)
	for _, tc := range []struct {
		user authUser
		want string
	}{
		{noKey, `etcdstore: compactor: etcd user "nokey" may not write the compactor's key "etcdstore/compactor": grant its role readwrite on it (etcdctl role grant-permission ROLE readwrite etcdstore/compactor)`},
		{withKey, `etcd refused it to user "withkey": etcd 3.5.31, 3.6.9, 3.7 and later compact only for a user with the root role; run RunCompactor with a client of such a user, or set etcd's --auto-compaction-retention instead`},
	} {
		if tc.user.name == withKey.name && !compactNeedsRoot(version.Version) {
			t.Logf("etcd %s compacts for a user without the root role: no refusal to check", version.Version)
			continue
		}
		c := authClient(t, srv, tc.user.name, tc.user.password)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		reported := make(chan error, 1)
		err := RunCompactor(ctx, c, 50*time.Millisecond, func(err error) {
			// A round's requests get the interval: on a loaded machine
			// one may time out before etcd refuses it.
			if !errors.Is(err, rpctypes.ErrPermissionDenied) {
				t.Logf("RunCompactor as %s: %v", tc.user.name, err)
				return
			}
			select {
			case reported <- err:
				cancel()
			default:
			}
		})
		cancel()
		if !errors.Is(err, context.Canceled) {
			t.Errorf("RunCompactor as %s returned %v, want context.Canceled once it reported", tc.user.name, err)
		}
		select {
		case err := <-reported:
			if !errors.Is(err, rpctypes.ErrPermissionDenied) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("RunCompactor as %s reported %v\nwant an error wrapping rpctypes.ErrPermissionDenied that says %q", tc.user.name, err, tc.want)
			}
		default:
			t.Errorf("RunCompactor as %s reported nothing in 10 s", tc.user.name)
		}
	}
}
