package etcdstore

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/etcdstore/etcdstore/internal/etcdtest"
)

// hostileMaxRequestBytes is the --max-request-bytes of the servers in
// these tests: small, so that values over it are cheap to send.
const hostileMaxRequestBytes = 64 << 10

// hostileEnv is a store under attack: one etcd, a store on a prefix, a
// store on a sibling prefix, canary keys just before, just after and
// beside the prefix range, and what each store should hold. After every
// hostile operation, check proves that nothing outside the store's
// session was touched.
type hostileEnv struct {
	t        *testing.T
	srv      *etcdtest.Server
	c        *clientv3.Client
	s        *EtcdStore
	sibling  *EtcdStore
	canaries []hostileCanary
	want     map[string][]byte // sessions s must hold
	sibWant  map[string][]byte // sessions sibling must hold
}

type hostileCanary struct {
	key   string
	value []byte
	rev   int64 // ModRevision when written
}

// hostileExpiry is a deadline far enough ahead for any test.
func hostileExpiry() time.Time { return time.Now().Add(time.Hour) }

// newHostileEnv starts an etcd with a 64 KiB request limit, puts a store
// under parent+"app:" and another under parent+"apq:" (the range end of
// the first prefix, so the two ranges touch), each with one bystander
// session, and writes canaries around the first prefix.
func newHostileEnv(t *testing.T) *hostileEnv {
	t.Helper()
	srv := etcdtest.Start(t, func(cfg *embed.Config) { cfg.MaxRequestBytes = hostileMaxRequestBytes })
	c := srv.Client(t)
	const parent = "t/hostile/"
	prefix, sibPrefix := parent+"app:", parent+"apq:"
	if rangeEnd(prefix) != parent+"app;" {
		t.Fatalf("rangeEnd(%q) = %q", prefix, rangeEnd(prefix))
	}
	e := &hostileEnv{
		t:       t,
		srv:     srv,
		c:       c,
		s:       NewWithPrefix(c, prefix),
		sibling: NewWithPrefix(c, sibPrefix),
		want:    map[string][]byte{"bystander": []byte("bystander data")},
		sibWant: map[string][]byte{"bystander": []byte("sibling data")},
	}
	for tok, data := range e.want {
		e.commit(e.s, tok, data)
	}
	for tok, data := range e.sibWant {
		e.commit(e.sibling, tok, data)
	}
	// Each canary holds a live envelope, so that All would list it as a
	// session if it ever read it.
	for _, key := range []string{
		parent + "app",              // the prefix without its separator
		parent + "app9\xff\xff\xff", // just before the range
		parent + "app\x00",          // before the range
		rangeEnd(prefix),            // the range end itself
		rangeEnd(prefix) + "\x00",   // just after it
		parent + "other:bystander",  // a sibling prefix
		"t/hostile0",                // after the parent
		"scs:session:bystander",     // the default prefix
		string(append([]byte(parent), 0xff)) + "app:bystander",
	} {
		value := encodeEnvelope(time.Now().Add(24*time.Hour), []byte("canary "+key))
		resp, err := c.Put(etcdtest.Context(t, 10*time.Second), key, value)
		if err != nil {
			t.Fatalf("put canary %q: %v", key, err)
		}
		e.canaries = append(e.canaries, hostileCanary{key: key, value: []byte(value), rev: resp.Header.Revision})
	}
	e.check("setup")
	return e
}

func (e *hostileEnv) commit(s *EtcdStore, token string, data []byte) {
	e.t.Helper()
	if err := s.Commit(token, data, hostileExpiry()); err != nil {
		e.t.Fatalf("Commit(%.40q): %v", token, err)
	}
}

// check fails the test unless every canary is unchanged, both stores
// hold exactly the sessions they should, and All lists exactly those.
func (e *hostileEnv) check(after string) {
	e.t.Helper()
	ops := make([]clientv3.Op, len(e.canaries))
	for i, cn := range e.canaries {
		ops[i] = clientv3.OpGet(cn.key)
	}
	resp, err := e.c.Txn(etcdtest.Context(e.t, 10*time.Second)).Then(ops...).Commit()
	if err != nil {
		e.t.Fatalf("after %s: read canaries: %v", after, err)
	}
	for i, cn := range e.canaries {
		kvs := resp.Responses[i].GetResponseRange().Kvs
		if len(kvs) != 1 || !bytes.Equal(kvs[0].Value, cn.value) || kvs[0].ModRevision != cn.rev {
			e.t.Fatalf("after %s: canary %q was touched: %v", after, cn.key, kvs)
		}
	}
	hostileCheckStore(e.t, after, "store", e.s, e.want)
	hostileCheckStore(e.t, after, "sibling store", e.sibling, e.sibWant)
}

// hostileCheckStore fails the test unless s holds exactly want, by Find
// and by All.
func hostileCheckStore(t *testing.T, after, name string, s *EtcdStore, want map[string][]byte) {
	t.Helper()
	all, err := s.All()
	if err != nil {
		t.Fatalf("after %s: %s All: %v", after, name, err)
	}
	if all == nil {
		t.Fatalf("after %s: %s All returned a nil map", after, name)
	}
	for tok, data := range all {
		if w, ok := want[tok]; !ok || !bytes.Equal(data, w) {
			t.Fatalf("after %s: %s All lists %.60q = %.60q; want %d sessions: %.200q", after, name, tok, data, len(want), hostileTokens(want))
		}
	}
	if len(all) != len(want) {
		t.Fatalf("after %s: %s All lists %.200q, want %.200q", after, name, hostileTokens(all), hostileTokens(want))
	}
	for tok, w := range want {
		got, found, err := s.Find(tok)
		if err != nil || !found || !bytes.Equal(got, w) {
			t.Fatalf("after %s: %s Find(%.60q) = %.60q, %v, %v; want %.60q", after, name, tok, got, found, err, w)
		}
	}
}

func hostileTokens(m map[string][]byte) []string {
	toks := make([]string, 0, len(m))
	for tok := range m {
		toks = append(toks, tok)
	}
	sort.Strings(toks)
	return toks
}

// TestHostileTokens commits, finds, lists and deletes sessions whose
// tokens hold bytes that could escape the prefix or confuse a key
// scheme. Every token up to MaxTokenLen, the empty one included, is just
// a name: it round-trips exactly, as a key inside the prefix range.
// Over-long tokens are refused as SCS's Store contract says: an error
// from Commit, found false from Find, nil from Delete. Nothing else in
// etcd changes.
func TestHostileTokens(t *testing.T) {
	t.Parallel()
	e := newHostileEnv(t)
	prefix := e.s.keys.prefix
	valid := []struct {
		name, token string
	}{
		{"empty", ""},
		{"NUL inside", "a\x00b"},
		{"NUL only", "\x00"},
		{"NULs", "\x00\x00\x00"},
		{"control bytes", "\x01\x02\x1b[2J\r\n\t\x7f"},
		{"invalid UTF-8", "\xc3\x28\xa0\xa1\xe2\x28\xa1"},
		{"UTF-16 surrogate", "\xed\xa0\x80"},
		{"slash", "/"},
		{"path traversal", "../apq:bystander"},
		{"equals the prefix", prefix},
		{"equals the range end", rangeEnd(prefix)},
		{"equals a canary", "t/hostile/app"},
		{"equals the sibling's token", "bystander2"},
		{"0xff", "\xff"},
		{"begins with 0xff", "\xff\xffz"},
		{"MaxTokenLen of 0xff", strings.Repeat("\xff", MaxTokenLen)},
		{"MaxTokenLen of NUL", strings.Repeat("\x00", MaxTokenLen)},
		{"space", " "},
		{"glob", "*"},
		{"percent-encoded", "%00%2F"},
		{"non-ASCII", "セッション"},
		{"SCS token", "pV4Qv7QDWNcAyFx4m8sNGyA2tW3bXnRj0m5kjz6kL0Q"},
	}
	e.sibWant["bystander2"] = []byte("sibling data 2")
	e.commit(e.sibling, "bystander2", e.sibWant["bystander2"])
	for i, tt := range valid {
		op := func(what string) string { return fmt.Sprintf("%s of %s token", what, tt.name) }
		if _, found, err := e.s.Find(tt.token); found || err != nil {
			t.Fatalf("#%d: Find of unknown %s token = %v, %v; want false, nil", i, tt.name, found, err)
		}
		data := []byte("data of " + tt.name)
		e.commit(e.s, tt.token, data)
		e.want[tt.token] = data
		e.check(op("Commit"))

		data = append(data, " (rewritten)"...)
		e.commit(e.s, tt.token, data)
		e.want[tt.token] = data
		e.check(op("second Commit"))

		raw, err := e.c.Get(etcdtest.Context(t, 10*time.Second), prefix+tt.token)
		if err != nil || len(raw.Kvs) != 1 {
			t.Fatalf("#%d: %s token is not at key prefix+token: %v, %v", i, tt.name, raw, err)
		}

		if err := e.s.Delete(tt.token); err != nil {
			t.Fatalf("#%d: Delete of %s token: %v", i, tt.name, err)
		}
		delete(e.want, tt.token)
		e.check(op("Delete"))
		if _, found, err := e.s.Find(tt.token); found || err != nil {
			t.Fatalf("#%d: Find of deleted %s token = %v, %v; want false, nil", i, tt.name, found, err)
		}
	}

	invalid := []struct {
		name, token string
	}{
		{"MaxTokenLen+1", strings.Repeat("a", MaxTokenLen+1)},
		{"1 MiB", strings.Repeat("\xff", 1<<20)},
		{"1 MiB beginning with the bystander's", "bystander" + strings.Repeat("\x00", 1<<20)},
	}
	for i, tt := range invalid {
		err := e.s.Commit(tt.token, []byte("data"), hostileExpiry())
		if err == nil || !strings.HasPrefix(err.Error(), "etcdstore: ") {
			t.Fatalf("#%d: Commit of %s token = %v, want an etcdstore: error", i, tt.name, err)
		}
		if len(err.Error()) > 200 {
			t.Errorf("#%d: Commit of %s token: error of %d bytes quotes the token", i, tt.name, len(err.Error()))
		}
		e.check(fmt.Sprintf("Commit of %s token", tt.name))
		if b, found, err := e.s.Find(tt.token); found || err != nil || b != nil {
			t.Fatalf("#%d: Find of %s token = %q, %v, %v; want nil, false, nil", i, tt.name, b, found, err)
		}
		if err := e.s.Delete(tt.token); err != nil {
			t.Fatalf("#%d: Delete of %s token = %v, want nil", i, tt.name, err)
		}
		e.check(fmt.Sprintf("Delete of %s token", tt.name))
	}

	// The store still works.
	e.commit(e.s, "after", []byte("after data"))
	e.want["after"] = []byte("after data")
	e.check("the hostile tokens")
}

// TestHostileValues commits session data that is empty, nil, looks like
// the store's own envelope, or sits at and over etcd's request limits.
// Data within the limits round-trips byte for byte; data over them gives
// an error wrapping ErrValueTooLarge that names --max-request-bytes and
// the request's size, and leaves the session's earlier data in place.
func TestHostileValues(t *testing.T) {
	t.Parallel()
	e := newHostileEnv(t)

	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	nearLimit := bytes.Repeat([]byte("0123456789abcdef"), (hostileMaxRequestBytes-1024)/16)
	fit := []struct {
		name string
		data []byte
	}{
		{"nil", nil},
		{"empty", []byte{}},
		{"expired envelope", []byte(encodeEnvelope(time.Unix(0, 1), []byte("inner")))},
		{"envelope of a later version", []byte("\x00ES\x02\x00\x00\x00\x00\x00\x00\x00\x01inner")},
		{"truncated envelope", []byte("\x00ES\x01\x00")},
		{"magic only", []byte("\x00ES")},
		{"NUL", []byte{0}},
		{"every byte value", all},
		{"1 KiB under --max-request-bytes", nearLimit},
	}
	for i, tt := range fit {
		e.commit(e.s, "tok", tt.data)
		got, found, err := e.s.Find("tok")
		if err != nil || !found || !bytes.Equal(got, tt.data) {
			t.Fatalf("#%d: %s data: Find = %.40q, %v, %v; want %.40q", i, tt.name, got, found, err, tt.data)
		}
		e.want["tok"] = tt.data
		e.check(tt.name + " data")
	}

	// The largest data that fits, found by bisection: at most the limit
	// less the key and the envelope header, and less only by the few bytes
	// of the request's own framing: a conditional Txn's, which names the
	// key three times (its compare, its put and its Else branch's get).
	// One byte more is refused.
	key := len(e.s.keys.prefix) + len("edge")
	lo, hi := 0, hostileMaxRequestBytes-key-envelopeHeader+1 // lo fits, hi does not
	for hi-lo > 1 {
		mid := (lo + hi) / 2
		err := e.s.Commit("edge", make([]byte, mid), hostileExpiry())
		switch {
		case err == nil:
			lo = mid
		case errors.Is(err, ErrValueTooLarge):
			hi = mid
		default:
			t.Fatalf("Commit of %d bytes: %v", mid, err)
		}
	}
	overhead := hostileMaxRequestBytes - key - envelopeHeader - lo
	t.Logf("largest data under --max-request-bytes=%d with a %d-byte key: %d bytes (%d bytes of request framing)", hostileMaxRequestBytes, key, lo, overhead)
	if overhead > 64+2*key {
		t.Errorf("largest data that fits is %d bytes, %d under the limit less key and envelope", lo, overhead)
	}
	edge := bytes.Repeat([]byte{0xee}, lo)
	e.commit(e.s, "edge", edge)
	e.want["edge"] = edge
	e.check("data at --max-request-bytes")
	if err := e.s.Commit("edge", append(edge, 0xee), hostileExpiry()); !errors.Is(err, ErrValueTooLarge) {
		t.Fatalf("Commit of %d bytes, one over the largest that fits = %v, want ErrValueTooLarge", lo+1, err)
	}
	e.check("data one byte over --max-request-bytes")

	// A client whose own send limit is below the server's.
	const clientLimit = 16 << 10
	small := etcdtest.NewClient(t, clientv3.Config{Endpoints: e.srv.Endpoints(), MaxCallSendMsgSize: clientLimit})
	smallStore := NewWithPrefix(small, e.s.keys.prefix)

	e.want["tok"] = []byte("kept")
	e.commit(e.s, "tok", e.want["tok"])
	tooLarge := []struct {
		name   string
		s      *EtcdStore
		size   int
		server bool   // refused by etcd's --max-request-bytes check
		limit  string // the limit the error names
	}{
		{"of --max-request-bytes", e.s, hostileMaxRequestBytes, true, "--max-request-bytes"},
		{"1 byte over --max-request-bytes", e.s, hostileMaxRequestBytes + 1, true, "--max-request-bytes"},
		{"over the server's gRPC receive limit", e.s, hostileMaxRequestBytes + 512<<10 + 1, false, "--max-request-bytes"},
		{"over the client's send limit", smallStore, clientLimit + 1, false, "MaxCallSendMsgSize"},
	}
	for i, tt := range tooLarge {
		data := bytes.Repeat([]byte{0xff}, tt.size)
		err := tt.s.Commit("tok", data, hostileExpiry())
		if !errors.Is(err, ErrValueTooLarge) || !strings.HasPrefix(err.Error(), "etcdstore: ") {
			t.Fatalf("#%d: %s: Commit = %v, want an etcdstore: error wrapping ErrValueTooLarge", i, tt.name, err)
		}
		if tt.server && !errors.Is(err, rpctypes.ErrRequestTooLarge) {
			t.Errorf("#%d: %s: Commit = %v, want it to wrap rpctypes.ErrRequestTooLarge", i, tt.name, err)
		}
		if !tt.server && status.Code(err) != codes.ResourceExhausted {
			t.Errorf("#%d: %s: Commit = %v, want it to wrap a ResourceExhausted status", i, tt.name, err)
		}
		size := len(e.s.keys.prefix) + len("tok") + envelopeHeader + tt.size
		for _, want := range []string{tt.limit, fmt.Sprint(size)} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("#%d: %s: error %q does not say %q", i, tt.name, err, want)
			}
		}
		e.check(tt.name)
	}

	// Both stores still work.
	e.commit(smallStore, "small", []byte("fits"))
	e.want["small"] = []byte("fits")
	e.commit(e.s, "tok", nearLimit)
	e.want["tok"] = nearLimit
	e.check("the too-large values")
}
