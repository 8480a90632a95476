package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The login: keeping the etcd client's auth token in use, and telling
// when etcd refuses it for good.
//
// A client made with a Username and Password logs in once, in
// clientv3.New (an Authenticate request), and sends the token it got
// with every request. With simple tokens, etcd's default, a member
// forgets a token that no request to it has carried for
// --auth-token-ttl (300 s by default): each request that carries the
// token resets its timer on the member that serves it, and on no other
// (server/auth/simple_token.go, tokenSimple.info). The client's next
// request is then refused with rpctypes.ErrInvalidAuthToken, and the
// client logs in again and sends it once more (client/v3
// retry_interceptor.go, shouldRefreshToken and refreshToken).
//
// etcd 3.5 and later serve that second login whatever token it carries
// (etcd PR #12165: processInternalRaftRequestOnce checks no token for an
// Authenticate request), so the request succeeds, about 100 ms late.
// etcd 3.4 checks the token of every request that goes through raft,
// Authenticate included, and the client from v3.6 on sends its expired
// token with the login (v3.5's refreshToken cleared it first, etcd PR
// #12549; v3.6's and v3.7's do not). The login is refused with the same
// error, which makes the client log in again, and again, until the
// request's deadline, each a password check on the server
// (etcd-io/etcd#13413). No request succeeds again until the app makes a
// new client. Measured against etcd 3.4.23 with --auth-token-ttl 3: a Put
// after 5 s idle waited its whole 2 s deadline, every time; after 5 s
// with a read every second, it took 0.8 ms.
//
// So a store on a client that logs in keeps the token in use: every
// WithAuthKeepAlive interval it reads one key of its prefix once per
// endpoint, count-only and serializable. The client's balancer sends
// successive requests to successive endpoints (round robin), so each
// member sees one; a serializable read needs no leader and no raft
// round, only the member's check of the token, which resets its timer.
// A keep-alive read that is refused for its permission has reset the
// timer all the same: the member checks the token first
// (etcdserver.doSerialize).
//
// When a read of the keep-alive, or an attempt of a call, times out, the
// store asks why: it reads once per endpoint again, within an attempt's
// share of its timeout, and asks every endpoint its status, which
// carries no token check. If every read timed out while every endpoint
// answered, one of them with an etcd before 3.5, etcd refuses the
// client's token and its login: calls that fail by their deadline then
// say so, wrapping rpctypes.ErrInvalidAuthToken, and count as
// Errors.Auth, until a read goes through again.

// defaultAuthKeepAlive is the default interval of the keep-alive: a
// fifth of etcd's default --auth-token-ttl, 300 s.
const defaultAuthKeepAlive = time.Minute

// login keeps a client's auth token in use and diagnoses its refusal
// (see above). It is safe for concurrent use by multiple goroutines.
type login struct {
	client   *clientv3.Client
	key      string        // the key the reads read: the store's prefix
	interval time.Duration // WithAuthKeepAlive
	probe    time.Duration // a read's deadline

	ctx       context.Context
	cancel    context.CancelFunc
	wake      chan struct{} // a call's attempt timed out: diagnose now
	done      chan struct{} // closed when run returns
	closeOnce sync.Once

	refused atomic.Pointer[tokenRefusedError] // the diagnosis, or nil
	rounds  atomic.Int64                      // rounds of reads made, for tests
}

// newLogin returns the login of client, whose keep-alive reads key every
// interval, each read within probe, not yet started; or nil when the
// client does not log in with a user name and password (no token, or
// one from a client certificate, which does not expire).
func newLogin(client *clientv3.Client, key string, interval, probe time.Duration) *login {
	if client.Username == "" || client.Password == "" {
		return nil
	}
	// The client's context: its Close ends the keep-alive too, for a
	// store that is never closed.
	ctx, cancel := context.WithCancel(client.Ctx())
	return &login{client: client, key: key, interval: interval, probe: probe,
		ctx: ctx, cancel: cancel, wake: make(chan struct{}, 1), done: make(chan struct{})}
}

// start starts the keep-alive's goroutine.
func (l *login) start() {
	go l.run()
}

// close stops the keep-alive and waits for its goroutine, once.
func (l *login) close() {
	l.closeOnce.Do(func() {
		l.cancel()
		<-l.done
	})
}

// run reads every interval, and whenever a call's attempt timed out,
// until the store or the client is closed.
func (l *login) run() {
	defer close(l.done)
	t := time.NewTicker(l.interval)
	defer t.Stop()
	var last time.Time // when the last round ended
	for {
		select {
		case <-l.ctx.Done():
			return
		case <-t.C:
		case <-l.wake:
			// While etcd refuses the token, every call wakes the login:
			// one round per gap is enough, and spares the server the
			// password checks of the client's logins.
			if time.Since(last) < l.gap() {
				continue
			}
		}
		l.round()
		last = time.Now()
	}
}

// gap is the least time between two rounds that calls' timeouts start:
// a call's whole timeout (WithTimeout), attemptShare times a read's.
func (l *login) gap() time.Duration { return attemptShare * l.probe }

// stalled tells the login that an attempt of a call timed out: it
// diagnoses at once, unless it is at it already.
func (l *login) stalled() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// round reads once per endpoint, and, if every read timed out, asks
// every endpoint its status, then records the diagnosis.
func (l *login) round() {
	defer l.rounds.Add(1)
	eps := l.client.Endpoints()
	reads := make([]error, len(eps))
	var wg sync.WaitGroup
	for i := range eps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(l.ctx, l.probe)
			defer cancel()
			_, reads[i] = l.client.Get(ctx, l.key, clientv3.WithSerializable(), clientv3.WithCountOnly())
		}()
	}
	wg.Wait()
	if l.ctx.Err() != nil {
		return
	}
	var statuses []endpointStatus
	if allTimedOut(reads) {
		statuses = make([]endpointStatus, len(eps))
		for i, ep := range eps {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(l.ctx, l.probe)
				defer cancel()
				statuses[i].endpoint = ep
				if st, err := l.client.Status(ctx, ep); err == nil {
					statuses[i].version, statuses[i].answered = st.Version, true
				}
			}()
		}
		wg.Wait()
	}
	if refused, known := diagnose(reads, statuses); known {
		if refused != nil {
			refused.user = l.client.Username
		}
		l.refused.Store(refused)
	}
}

// endpointStatus is an endpoint's answer to a Status request, if it
// answered.
type endpointStatus struct {
	endpoint, version string
	answered          bool
}

// allTimedOut reports whether every read failed by its deadline.
func allTimedOut(reads []error) bool {
	for _, err := range reads {
		if !errors.Is(err, context.DeadlineExceeded) {
			return false
		}
	}
	return len(reads) > 0
}

// diagnose tells, from one read per endpoint and, when every read timed
// out, every endpoint's status, whether etcd refuses the client's token
// and its login (a non-nil error), or not (nil), and whether it can tell
// at all (known). A read that went through, or one refused for another
// reason, says the token works; reads that timed out while an endpoint
// did not answer its status say nothing (etcd may be down); reads that
// timed out while every endpoint answered say the token was refused if
// one of them runs an etcd that refuses a login carrying an expired
// token (reloginRefused), else that the token is not the cause. It does
// no I/O.
func diagnose(reads []error, statuses []endpointStatus) (refused *tokenRefusedError, known bool) {
	if len(reads) == 0 {
		return nil, false
	}
	if !allTimedOut(reads) {
		return nil, true
	}
	if len(statuses) == 0 {
		return nil, false
	}
	var old *endpointStatus
	for i, st := range statuses {
		if !st.answered {
			return nil, false
		}
		if old == nil && reloginRefused(st.version) {
			old = &statuses[i]
		}
	}
	if old == nil {
		return nil, true
	}
	return &tokenRefusedError{version: old.version, endpoint: old.endpoint}, true
}

// reloginRefused reports whether an etcd server of version (as Status
// gives it, "3.4.23") checks the token of an Authenticate request, and
// so refuses the login of a client that sends its expired token: etcd
// before 3.5 (etcd PR #12165 is in 3.5.0). An unparsable version is
// taken as a new one.
func reloginRefused(version string) bool {
	major, rest, ok := strings.Cut(version, ".")
	if !ok {
		return false
	}
	minor, _, _ := strings.Cut(rest, ".")
	ma, err1 := strconv.Atoi(major)
	mi, err2 := strconv.Atoi(minor)
	if err1 != nil || err2 != nil {
		return false
	}
	return ma < 3 || ma == 3 && mi < 5
}

// tokenRefusedError is the diagnosis of a client whose token etcd
// refuses, with the login that would renew it. It wraps
// rpctypes.ErrInvalidAuthToken.
type tokenRefusedError struct {
	user, version, endpoint string
}

func (e *tokenRefusedError) Error() string {
	return fmt.Sprintf("etcd %s at %s refuses the auth token of user %q and the client's logins with it: "+
		"the token went unused for longer than the server's --auth-token-ttl, or a member lost it in a restart, "+
		"and etcd before 3.5 refuses a login that carries an expired token (etcd-io/etcd#13413); "+
		"make a new etcd client (restart the app), and keep WithAuthKeepAlive below --auth-token-ttl, "+
		"or move to etcd 3.5 or later, where the client logs in again by itself: %v",
		e.version, e.endpoint, e.user, rpctypes.ErrInvalidAuthToken)
}

func (e *tokenRefusedError) Unwrap() error { return rpctypes.ErrInvalidAuthToken }

// explain returns err, the error of a call that failed by its deadline,
// with the diagnosis if etcd refuses the token, and wakes the login to
// diagnose again.
func (l *login) explain(err error) error {
	if !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	l.stalled()
	if refused := l.refused.Load(); refused != nil {
		return fmt.Errorf("%w (%w)", err, refused)
	}
	return err
}
