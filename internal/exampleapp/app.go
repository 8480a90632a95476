// Package exampleapp is the web app of etcdstore's example command: the
// routes of SCS's README, plus login, logout, a count of the live
// sessions, and a server-sent event stream that tells a browser's open
// page when its session ends (WithEvents). The load test serves it too.
package exampleapp

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"log"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/alexedwards/scs/v2"
	"github.com/etcdstore/etcdstore"
)

// MaxNameLen bounds the name a visitor logs in under, in bytes.
const MaxNameLen = 64

// MaxMessageLen bounds the message /put stores, in bytes.
const MaxMessageLen = 1024

// defaultMessage is what /put stores without a message, as in SCS's README.
const defaultMessage = "Hello from a session!"

// Session keys.
const (
	keyMessage = "message" // string: what /put stores
	keyUser    = "user"    // string: the name logged in under, or absent
	keyCount   = "count"   // int: the requests /count has seen
)

// PrincipalKey is the session key that names a session's user: give it
// to etcdstore.WithPrincipal so that /devices and /logout-everywhere work.
const PrincipalKey = keyUser

// principals is what a store that keeps sessions by principal offers
// (etcdstore.EtcdStore with WithPrincipal).
type principals interface {
	FindByPrincipal(ctx context.Context, principal string) (map[string][]byte, error)
	DeleteByPrincipal(ctx context.Context, principal string, except ...string) (int, error)
}

// NewSessionManager returns an SCS session manager that keeps its
// sessions in store, with the given idle timeout (0 for none) and
// lifetime, and HashTokenInStore on: the store sees only the tokens'
// digests. Store errors are logged and answered with 500.
func NewSessionManager(store scs.Store, idle, lifetime time.Duration) *scs.SessionManager {
	sm := scs.New()
	sm.Store = store
	sm.HashTokenInStore = true
	sm.IdleTimeout = idle
	sm.Lifetime = lifetime
	sm.ErrorFunc = serverError
	return sm
}

// New returns the app's handler: its routes behind sm.LoadAndSave, which
// loads each request's session and commits it before the response. A
// request whose cookie's session has ended is told why on /, while the
// store keeps its tombstone (signedOut).
//
//	/          what the session holds, why it ended, and the routes
//	/put       store the form value "m" in the session, or a greeting
//	/get       show the message
//	/count     count the session's requests here: a write on every request
//	/login     log in as the form value "name", under a new token; 409
//	           when the user's session limit refuses another session
//	/logout    destroy the session
//	/sessions  count the live sessions
//	/devices   the sessions of the user logged in, and which is this one
//	/logout-everywhere  end every other session of the user logged in
//	/events    server-sent events: the end of this session, as it
//	           happens (WithEvents)
//
// A browser (a request that accepts text/html) gets / as a page whose
// script follows /events and says "You were signed out: REASON" when the
// session ends, without a reload.
func New(sm *scs.SessionManager, opts ...Option) http.Handler {
	a := &app{sm: sm}
	for _, opt := range opts {
		opt(a)
	}
	if src, ok := sm.Store.(eventSource); ok && a.eventsCtx != nil {
		a.hub = startHub(a.eventsCtx, src)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/{$}", a.home)
	mux.HandleFunc("/put", a.put)
	mux.HandleFunc("/get", a.get)
	mux.HandleFunc("/count", a.count)
	mux.HandleFunc("/login", a.login)
	mux.HandleFunc("/logout", a.logout)
	mux.HandleFunc("GET /sessions", a.sessions)
	mux.HandleFunc("GET /devices", a.devices)
	mux.HandleFunc("POST /logout-everywhere", a.logoutEverywhere)
	mux.HandleFunc("GET /events", a.events)
	return sm.LoadAndSave(a.signedOut(mux))
}

type app struct {
	sm        *scs.SessionManager
	eventsCtx context.Context // WithEvents's, or nil
	hub       *hub            // feeds /events; nil without WithEvents or a store with Events
}

// home shows what the session holds, or why it ended, and the routes: as
// plain text, or to a browser as a page that follows /events (homePage).
func (a *app) home(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	var b strings.Builder
	if user := a.sm.GetString(ctx, keyUser); user != "" {
		fmt.Fprintf(&b, "logged in as %s\n", user)
	} else {
		fmt.Fprintln(&b, "not logged in")
	}
	if e, ok := endingOf(ctx); ok {
		fmt.Fprintln(&b, signedOutLine(e))
	}
	fmt.Fprintf(&b, "message: %q\n\n", a.sm.GetString(ctx, keyMessage))
	fmt.Fprintln(&b, "routes: /put?m=MESSAGE /get /count /login?name=NAME /logout /sessions /devices /events, POST /logout-everywhere")
	w.Header().Add("Vary", "Accept")
	if !strings.Contains(r.Header.Get("Accept"), "text/html") {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, b.String())
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := homePage.Execute(w, b.String()); err != nil {
		log.Printf("%s %s: %v", r.Method, r.URL.Path, err)
	}
}

// homePage is / for a browser: the text of / and a script that follows
// /events and, when the session ends, says why in #signed-out. A page
// with no session gets 204 from /events, and its EventSource stops.
var homePage = template.Must(template.New("home").Parse(`<!doctype html>
<html lang="en">
<meta charset="utf-8">
<title>etcdstore example</title>
<pre>{{.}}</pre>
<p id="signed-out" role="status"></p>
<script>
var events = new EventSource("/events");
events.addEventListener("ended", function (e) {
  events.close();
  document.getElementById("signed-out").textContent = "You were signed out: " + JSON.parse(e.data).reason;
});
</script>
</html>
`))

// put stores the form value "m" (query or body) as the message, or, as in
// SCS's README, a greeting when there is none.
func (a *app) put(w http.ResponseWriter, r *http.Request) {
	msg := r.FormValue("m")
	if len(msg) > MaxMessageLen {
		http.Error(w, fmt.Sprintf("m must be at most %d bytes", MaxMessageLen), http.StatusBadRequest)
		return
	}
	if msg == "" {
		msg = defaultMessage
	}
	a.sm.Put(r.Context(), keyMessage, msg)
	fmt.Fprintln(w, "stored")
}

// get shows the message /put stored, or nothing.
func (a *app) get(w http.ResponseWriter, r *http.Request) {
	fmt.Fprintln(w, a.sm.GetString(r.Context(), keyMessage))
}

// count adds one to the session's count and shows it: the session
// changes on every request, as a page-view counter, a last-seen time or a
// rotating CSRF token makes it.
func (a *app) count(w http.ResponseWriter, r *http.Request) {
	n := a.sm.GetInt(r.Context(), keyCount) + 1
	a.sm.Put(r.Context(), keyCount, n)
	fmt.Fprintf(w, "count: %d\n", n)
}

// tooManyDevices answers a login that the user's session limit refuses
// (etcdstore.WithSessionLimit with etcdstore.RefuseNew), with 409
// Conflict: the name is fine, but the user's sessions elsewhere conflict
// with one more, and a logout on one of them makes the same login work.
const tooManyDevices = "too many devices: log out on another device first"

// login logs the visitor in as the form value "name" (query or body).
// The session keeps its data but gets a new token, so a token planted
// before the login (session fixation) is worth nothing after it.
//
// It commits the session itself, so that a store with a session limit
// that refuses it (an error wrapping etcdstore.ErrSessionLimit; the
// store wrote nothing) is answered with 409 and tooManyDevices, not
// through the ErrorFunc with 500 as SCS's own commit would be. It then
// destroys the session, which SCS would otherwise commit again (and the
// store refuse again) at the end of the request, since it is still
// modified: the visitor leaves with no session and no cookie (the data
// of the session from before the login went with RenewToken). A login
// that commits is committed again at the end of the request, which
// keeps the principal and so is not checked against the limit (with
// etcdstore.WithTouchInterval it writes nothing).
func (a *app) login(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimSpace(r.FormValue("name"))
	if name == "" || len(name) > MaxNameLen {
		http.Error(w, fmt.Sprintf("name must be 1 to %d bytes", MaxNameLen), http.StatusBadRequest)
		return
	}
	ctx := r.Context()
	// RenewToken deletes the old token's session from the store at once.
	if err := a.sm.RenewToken(ctx); err != nil {
		serverError(w, r, err)
		return
	}
	a.sm.Put(ctx, keyUser, name)
	if _, _, err := a.sm.Commit(ctx); errors.Is(err, etcdstore.ErrSessionLimit) {
		if err := a.sm.Destroy(ctx); err != nil {
			serverError(w, r, err)
			return
		}
		http.Error(w, tooManyDevices, http.StatusConflict)
		return
	} else if err != nil {
		serverError(w, r, err)
		return
	}
	fmt.Fprintf(w, "logged in as %s\n", name)
}

// logout deletes the session from the store and tells the browser to drop
// its cookie.
func (a *app) logout(w http.ResponseWriter, r *http.Request) {
	if err := a.sm.Destroy(r.Context()); err != nil {
		serverError(w, r, err)
		return
	}
	fmt.Fprintln(w, "logged out")
}

// sessions counts the live sessions: SCS's Iterate reads them all with
// the store's AllCtx, which skips expired ones.
func (a *app) sessions(w http.ResponseWriter, r *http.Request) {
	n := 0
	err := a.sm.Iterate(r.Context(), func(context.Context) error {
		n++
		return nil
	})
	if err != nil {
		serverError(w, r, err)
		return
	}
	fmt.Fprintf(w, "live sessions: %d\n", n)
}

// principal returns the user logged in and the store's index of
// sessions by user, or answers the request itself and returns false.
func (a *app) principal(w http.ResponseWriter, r *http.Request) (string, principals, bool) {
	user := a.sm.GetString(r.Context(), keyUser)
	if user == "" {
		http.Error(w, "not logged in", http.StatusForbidden)
		return "", nil, false
	}
	p, ok := a.sm.Store.(principals)
	if !ok {
		noIndex(w)
		return "", nil, false
	}
	return user, p, true
}

// principalError answers a request whose lookup by user failed with
// err: 501 for a store made without etcdstore.WithPrincipal, else 500.
func principalError(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, etcdstore.ErrNoPrincipal) {
		noIndex(w)
		return
	}
	serverError(w, r, err)
}

// noIndex answers that the session store keeps no sessions by user.
func noIndex(w http.ResponseWriter) {
	http.Error(w, "the session store keeps no sessions by user", http.StatusNotImplemented)
}

// devices lists the sessions of the user logged in, one line each, by a
// short digest of the token (a token is a password: it is never shown),
// marking the one of this request.
func (a *app) devices(w http.ResponseWriter, r *http.Request) {
	user, p, ok := a.principal(w, r)
	if !ok {
		return
	}
	sessions, err := p.FindByPrincipal(r.Context(), user)
	if err != nil {
		principalError(w, r, err)
		return
	}
	current := etcdstore.StoreToken(a.sm, a.sm.Token(r.Context()))
	var lines []string
	for token := range sessions {
		line := tokenDigest(token)
		if token == current {
			line += " (this one)"
		}
		lines = append(lines, line)
	}
	sort.Strings(lines)
	fmt.Fprintf(w, "sessions of %s: %d\n", user, len(sessions))
	for _, line := range lines {
		fmt.Fprintln(w, line)
	}
}

// logoutEverywhere ends every session of the user logged in but this
// request's.
func (a *app) logoutEverywhere(w http.ResponseWriter, r *http.Request) {
	user, p, ok := a.principal(w, r)
	if !ok {
		return
	}
	n, err := p.DeleteByPrincipal(r.Context(), user, etcdstore.StoreToken(a.sm, a.sm.Token(r.Context())))
	if err != nil {
		principalError(w, r, err)
		return
	}
	sessions := "sessions"
	if n == 1 {
		sessions = "session"
	}
	fmt.Fprintf(w, "ended %d other %s of %s\n", n, sessions, user)
}

// tokenDigest names a session without showing its token.
func tokenDigest(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:4])
}

// serverError logs err, which comes from the session store or SCS, and
// answers 500. The visitor sees no detail.
func serverError(w http.ResponseWriter, r *http.Request, err error) {
	log.Printf("%s %s: %v", r.Method, r.URL.Path, err)
	http.Error(w, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
}
