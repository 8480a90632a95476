package main

import (
	"cmp"
	"context"
	"fmt"
	"log"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/alexedwards/scs/v2"
	"github.com/etcdstore/etcdstore"
)

// maxNameLen bounds the name a visitor logs in under, in bytes.
const maxNameLen = 64

// Session keys.
const (
	keyVisits = "visits" // int: GET / requests in this session
	keyUser   = "user"   // string: the name logged in under, or absent
)

// newSessionManager returns an SCS session manager that keeps its
// sessions in store. Store errors reach serverError.
func newSessionManager(store *etcdstore.EtcdStore, idle, lifetime time.Duration) *scs.SessionManager {
	sessions := scs.New()
	sessions.Store = store
	sessions.IdleTimeout = idle
	sessions.Lifetime = lifetime
	sessions.ErrorFunc = serverError
	return sessions
}

// app holds the HTTP handlers.
type app struct {
	sessions *scs.SessionManager
}

// routes returns the app's handler: its routes behind SCS's middleware,
// which loads each request's session and commits it before the response.
func (a *app) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", a.home)
	mux.HandleFunc("POST /login", a.login)
	mux.HandleFunc("POST /logout", a.logout)
	mux.HandleFunc("GET /sessions", a.list)
	return a.sessions.LoadAndSave(mux)
}

// home counts a visit and shows the session.
func (a *app) home(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	visits := a.sessions.GetInt(ctx, keyVisits) + 1
	// Put before the first write: the middleware commits the session
	// when the response begins.
	a.sessions.Put(ctx, keyVisits, visits)

	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "visits: %d\n", visits)
	if user := a.sessions.GetString(ctx, keyUser); user != "" {
		fmt.Fprintf(w, "user: %s\n", user)
	} else {
		fmt.Fprintln(w, "not logged in")
	}
	fmt.Fprintf(w, "deadline: %s\n", a.sessions.Deadline(ctx).Format(time.RFC3339))
}

// login logs the visitor in as the form value "name". The session keeps
// its data but gets a new token, so a token planted before the login
// (session fixation) is worth nothing after it.
func (a *app) login(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimSpace(r.PostFormValue("name"))
	if name == "" || len(name) > maxNameLen {
		http.Error(w, fmt.Sprintf("name must be 1 to %d bytes", maxNameLen), http.StatusBadRequest)
		return
	}
	ctx := r.Context()
	// RenewToken deletes the old token's session from the store at once;
	// the middleware commits the session under the new token.
	if err := a.sessions.RenewToken(ctx); err != nil {
		serverError(w, r, err)
		return
	}
	a.sessions.Put(ctx, keyUser, name)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// logout deletes the session from the store and tells the browser to
// drop its cookie.
func (a *app) logout(w http.ResponseWriter, r *http.Request) {
	if err := a.sessions.Destroy(r.Context()); err != nil {
		serverError(w, r, err)
		return
	}
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// list shows every live session: SCS's Iterate reads them all with the
// store's AllCtx, which skips expired ones.
func (a *app) list(w http.ResponseWriter, r *http.Request) {
	type entry struct {
		user   string
		visits int
	}
	var entries []entry
	err := a.sessions.Iterate(r.Context(), func(ctx context.Context) error {
		entries = append(entries, entry{
			user:   a.sessions.GetString(ctx, keyUser),
			visits: a.sessions.GetInt(ctx, keyVisits),
		})
		return nil
	})
	if err != nil {
		serverError(w, r, err)
		return
	}
	slices.SortFunc(entries, func(x, y entry) int {
		return cmp.Or(strings.Compare(x.user, y.user), cmp.Compare(x.visits, y.visits))
	})

	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "live sessions: %d\n", len(entries))
	for _, e := range entries {
		user := e.user
		if user == "" {
			user = "(not logged in)"
		}
		fmt.Fprintf(w, "%s\tvisits: %d\n", user, e.visits)
	}
}

// serverError logs err, which comes from the session store or SCS, and
// answers 500. The visitor sees no detail.
func serverError(w http.ResponseWriter, r *http.Request, err error) {
	log.Printf("%s %s: %v", r.Method, r.URL.Path, err)
	http.Error(w, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
}
