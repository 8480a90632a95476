package etcdstore

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/etcdstore/etcdstore/internal/etcdtest"
)

// authBcryptCost is the lowest cost bcrypt accepts (bcrypt.MinCost):
// password checks in these tests need no strength, only speed.
const authBcryptCost = 4

// authUser is an etcd user with one role holding one permission on the
// range [key, end).
type authUser struct {
	name, password string
	perm           clientv3.PermissionType
	key, end       string
}

// readWriteUser is a user with readwrite on every key under prefix.
func readWriteUser(name, password, prefix string) authUser {
	return authUser{name: name, password: password, perm: clientv3.PermissionType(clientv3.PermReadWrite), key: prefix, end: rangeEnd(prefix)}
}

// startAuthEtcd starts an etcd with auth on, simple tokens, a root user
// and the given users, and returns a client logged in as root.
func startAuthEtcd(t *testing.T, users ...authUser) (*etcdtest.Server, *clientv3.Client) {
	t.Helper()
	srv := etcdtest.Start(t, func(cfg *embed.Config) {
		cfg.AuthToken = "simple"
		cfg.BcryptCost = authBcryptCost
	})
	setUpAuth(t, srv.Client(t), users...)
	return srv, authClient(t, srv, "root", "root-password")
}

// setUpAuth adds, through admin, a client of an etcd with auth off, a
// root user (password "root-password") with the root role, and the given
// users, each with a role of its name that holds its permission, then
// turns auth on.
func setUpAuth(t *testing.T, admin *clientv3.Client, users ...authUser) {
	t.Helper()
	ctx := etcdtest.Context(t, 30*time.Second)
	step := func(what string, _ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("auth setup: %s: %v", what, err)
		}
	}
	r1, err := admin.UserAdd(ctx, "root", "root-password")
	step("add user root", r1, err)
	r2, err := admin.RoleAdd(ctx, "root")
	step("add role root", r2, err)
	r3, err := admin.UserGrantRole(ctx, "root", "root")
	step("grant role root", r3, err)
	for _, u := range users {
		r1, err := admin.RoleAdd(ctx, u.name)
		step("add role "+u.name, r1, err)
		r2, err := admin.RoleGrantPermission(ctx, u.name, u.key, u.end, u.perm)
		step("grant permission to role "+u.name, r2, err)
		r3, err := admin.UserAdd(ctx, u.name, u.password)
		step("add user "+u.name, r3, err)
		r4, err := admin.UserGrantRole(ctx, u.name, u.name)
		step("grant role "+u.name, r4, err)
	}
	r4, err := admin.AuthEnable(ctx)
	step("enable auth", r4, err)
}

// authClient returns a client of srv logged in as user.
func authClient(t *testing.T, srv *etcdtest.Server, user, password string) *clientv3.Client {
	t.Helper()
	return etcdtest.NewClient(t, clientv3.Config{Endpoints: srv.Endpoints(), Username: user, Password: password})
}

// authStoreOps runs Commit, Find, Delete and All on s and returns their
// errors by method name.
func authStoreOps(ctx context.Context, s *EtcdStore) map[string]error {
	errs := map[string]error{
		"Commit": s.CommitCtx(ctx, "tok", []byte("data"), time.Now().Add(time.Hour)),
		"Delete": s.DeleteCtx(ctx, "tok"),
	}
	_, _, errs["Find"] = s.FindCtx(ctx, "tok")
	_, errs["All"] = s.AllCtx(ctx)
	return errs
}

// TestAuth runs the store as an etcd user whose only role grants
// read-write on exactly the store's prefix range [prefix,
// rangeEnd(prefix)). Every method works: lease grants need only an
// authenticated user (server/etcdserver/v3_server.go, LeaseGrant), and
// the leases the store shares hold only keys in its range, so attaching
// more keys to them is allowed (server/etcdserver/apply/auth.go,
// checkLeasePuts). The same user's store on another prefix, a read-only
// user's Commit and Delete, and a client that does not log in all get
// errors that start with "etcdstore:" and wrap etcd's.
func TestAuth(t *testing.T) {
	t.Parallel()
	const prefix, outside = "t/auth/app:", "t/auth/other:"
	app := readWriteUser("app", "app-password", prefix)
	reader := authUser{name: "reader", password: "reader-password", perm: clientv3.PermissionType(clientv3.PermRead), key: prefix, end: rangeEnd(prefix)}
	srv, root := startAuthEtcd(t, app, reader)
	ctx := etcdtest.Context(t, 30*time.Second)

	// The app user has its own role and no other.
	u, err := root.UserGet(ctx, "app")
	if err != nil || len(u.Roles) != 1 || u.Roles[0] != "app" {
		t.Fatalf("roles of user app = %v, %v; want [app]", u, err)
	}
	// A key beside the range, which no store here may touch.
	canary, err := root.Put(ctx, outside+"tok", "canary")
	if err != nil {
		t.Fatal(err)
	}

	appClient := authClient(t, srv, app.name, app.password)
	s := NewWithPrefix(appClient, prefix)
	expiry := time.Now().Add(time.Hour)
	// Several sessions on one shared lease, and a rewrite onto it.
	tokens := []string{"a", "b", "c", "a"}
	for _, tok := range tokens {
		if err := s.CommitCtx(ctx, tok, []byte("data "+tok), expiry); err != nil {
			t.Fatalf("Commit(%q) as app: %v", tok, err)
		}
	}
	leases := make(map[int64]bool)
	for _, tok := range tokens {
		got, found, err := s.FindCtx(ctx, tok)
		if err != nil || !found || string(got) != "data "+tok {
			t.Fatalf("Find(%q) as app = %q, %v, %v", tok, got, found, err)
		}
		raw, err := root.Get(ctx, prefix+tok)
		if err != nil || len(raw.Kvs) != 1 {
			t.Fatalf("get %q as root: %v, %v", tok, raw, err)
		}
		leases[raw.Kvs[0].Lease] = true
	}
	if len(leases) != 1 {
		t.Errorf("the app store's sessions are on %d leases, want one shared lease", len(leases))
	}
	all, err := s.AllCtx(ctx)
	if err != nil || len(all) != 3 {
		t.Fatalf("All as app = %q, %v; want 3 sessions", all, err)
	}
	if err := s.DeleteCtx(ctx, "a"); err != nil {
		t.Fatalf("Delete as app: %v", err)
	}
	if _, found, err := s.FindCtx(ctx, "a"); found || err != nil {
		t.Fatalf("Find of deleted session as app = %v, %v", found, err)
	}
	// A store on a prefix inside the granted range works too.
	inner := NewWithPrefix(appClient, prefix+"inner:")
	for op, err := range authStoreOps(ctx, inner) {
		if err != nil {
			t.Errorf("%s as app under %q: %v", op, inner.keys.prefix, err)
		}
	}

	// The app user's store on a prefix outside its role.
	denied := NewWithPrefix(appClient, outside)
	for op, err := range authStoreOps(ctx, denied) {
		if !errors.Is(err, rpctypes.ErrPermissionDenied) || !strings.HasPrefix(err.Error(), "etcdstore: ") {
			t.Errorf("%s as app under %q = %v, want an etcdstore: error wrapping rpctypes.ErrPermissionDenied", op, outside, err)
		}
	}
	// A store whose prefix is a prefix of the granted one: its range
	// reaches past the grant.
	wide := NewWithPrefix(appClient, "t/auth/app")
	if _, err := wide.AllCtx(ctx); !errors.Is(err, rpctypes.ErrPermissionDenied) || !strings.HasPrefix(err.Error(), "etcdstore: ") {
		t.Errorf("All as app under %q = %v, want an etcdstore: error wrapping rpctypes.ErrPermissionDenied", wide.keys.prefix, err)
	}

	// A read-only user finds and lists, but may not write.
	ro := NewWithPrefix(authClient(t, srv, reader.name, reader.password), prefix)
	if got, found, err := ro.FindCtx(ctx, "b"); err != nil || !found || string(got) != "data b" {
		t.Errorf("Find as reader = %q, %v, %v", got, found, err)
	}
	if all, err := ro.AllCtx(ctx); err != nil || len(all) != 2 {
		t.Errorf("All as reader = %q, %v; want 2 sessions", all, err)
	}
	if err := ro.CommitCtx(ctx, "b", []byte("overwritten"), expiry); !errors.Is(err, rpctypes.ErrPermissionDenied) || !strings.HasPrefix(err.Error(), "etcdstore: ") {
		t.Errorf("Commit as reader = %v, want an etcdstore: error wrapping rpctypes.ErrPermissionDenied", err)
	}
	if err := ro.DeleteCtx(ctx, "b"); !errors.Is(err, rpctypes.ErrPermissionDenied) || !strings.HasPrefix(err.Error(), "etcdstore: ") {
		t.Errorf("Delete as reader = %v, want an etcdstore: error wrapping rpctypes.ErrPermissionDenied", err)
	}

	// A client that does not log in.
	anon := NewWithPrefix(srv.Client(t), prefix)
	for op, err := range authStoreOps(ctx, anon) {
		if !errors.Is(err, rpctypes.ErrUserEmpty) || !strings.HasPrefix(err.Error(), "etcdstore: ") {
			t.Errorf("%s without logging in = %v, want an etcdstore: error wrapping rpctypes.ErrUserEmpty", op, err)
		}
	}

	// Nothing outside the range changed, and the refused writes wrote
	// nothing; the deleted sessions left tombstones.
	raw, err := root.Get(ctx, "t/auth/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, kv := range raw.Kvs {
		if isTombstone(kv.Value) {
			continue
		}
		keys = append(keys, string(kv.Key))
		if string(kv.Key) == outside+"tok" && (!bytes.Equal(kv.Value, []byte("canary")) || kv.ModRevision != canary.Header.Revision) {
			t.Errorf("key %q outside the granted range was changed", kv.Key)
		}
	}
	if want := []string{prefix + "b", prefix + "c", outside + "tok"}; strings.Join(keys, " ") != strings.Join(want, " ") {
		t.Errorf("keys under t/auth/ = %q, want %q", keys, want)
	}
}

// TestAuthPermissionRevoked: once the role loses its permission, the
// store's requests fail with etcdstore: errors wrapping
// rpctypes.ErrPermissionDenied (the client renews its auth token for the
// new auth revision by itself); once it is granted again, the store
// works again with no new client.
func TestAuthPermissionRevoked(t *testing.T) {
	t.Parallel()
	const prefix = "t/auth/app:"
	app := readWriteUser("app", "app-password", prefix)
	srv, root := startAuthEtcd(t, app)
	ctx := etcdtest.Context(t, 30*time.Second)
	s := NewWithPrefix(authClient(t, srv, app.name, app.password), prefix)
	expiry := time.Now().Add(time.Hour)
	if err := s.CommitCtx(ctx, "tok", []byte("data"), expiry); err != nil {
		t.Fatalf("Commit as app: %v", err)
	}

	if _, err := root.RoleRevokePermission(ctx, app.name, app.key, app.end); err != nil {
		t.Fatal(err)
	}
	for op, err := range authStoreOps(ctx, s) {
		if !errors.Is(err, rpctypes.ErrPermissionDenied) || !strings.HasPrefix(err.Error(), "etcdstore: ") {
			t.Errorf("%s after the permission was revoked = %v, want an etcdstore: error wrapping rpctypes.ErrPermissionDenied", op, err)
		}
	}

	if _, err := root.RoleGrantPermission(ctx, app.name, app.key, app.end, app.perm); err != nil {
		t.Fatal(err)
	}
	if got, found, err := s.FindCtx(ctx, "tok"); err != nil || !found || string(got) != "data" {
		t.Fatalf("Find after the permission was granted again = %q, %v, %v", got, found, err)
	}
	for op, err := range authStoreOps(ctx, s) {
		if err != nil {
			t.Errorf("%s after the permission was granted again: %v", op, err)
		}
	}
}
