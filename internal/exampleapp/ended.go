package exampleapp

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"time"

	"github.com/etcdstore/etcdstore"
)

// endings is what a store that says why a session ended offers
// (etcdstore.EtcdStore).
type endings interface {
	Ended(ctx context.Context, token string) (etcdstore.Ending, bool, error)
}

// endingKey is the request context key of why the session of the
// request's cookie ended, an etcdstore.Ending.
type endingKey struct{}

// signedOut tells a visitor why their session ended. It runs inside
// sm.LoadAndSave, which has loaded the session by then and leaves the
// request's cookie as it came: when the request carried a token but SCS
// found no session for it (SCS then starts a new session, with no token
// until it is committed, so sm.Token differs from the cookie's), it asks
// the store why, and puts the answer in the request's context for the
// pages to show (endingOf). It also tells the browser to drop the dead
// cookie, so the visitor is told once and the store is asked once. A
// request whose session is found, or that carried no cookie, costs
// nothing more.
//
// A store without Ended, or one that fails to answer (logged), only
// leaves the visitor signed out, as SCS alone does.
func (a *app) signedOut(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cookie, err := r.Cookie(a.sm.Cookie.Name)
		if err != nil || cookie.Value == "" || a.sm.Token(r.Context()) == cookie.Value {
			next.ServeHTTP(w, r)
			return
		}
		ctx := r.Context()
		// Before the handler: a session it commits writes its own cookie
		// after this one, which the browser keeps.
		a.sm.WriteSessionCookie(ctx, w, "", time.Time{})
		if store, ok := a.sm.Store.(endings); ok {
			ending, ended, err := store.Ended(ctx, etcdstore.StoreToken(a.sm, cookie.Value))
			switch {
			case err != nil:
				log.Printf("%s %s: why the session ended: %v", r.Method, r.URL.Path, err)
			case ended:
				r = r.WithContext(context.WithValue(ctx, endingKey{}, ending))
			}
		}
		next.ServeHTTP(w, r)
	})
}

// endingOf returns why the session of the request's cookie ended, as
// signedOut found it, and true; or false when it did not end, or the
// store could not say.
func endingOf(ctx context.Context) (etcdstore.Ending, bool) {
	e, ok := ctx.Value(endingKey{}).(etcdstore.Ending)
	return e, ok
}

// signedOutLine is the line that tells the visitor why and when their
// session ended, such as "you were signed out: ended by the session
// limit, at 12:03:04 UTC (you signed in on another device)".
func signedOutLine(e etcdstore.Ending) string {
	if e.Reason == etcdstore.EndUnknown {
		return "you were signed out"
	}
	line := "you were signed out: " + e.Reason.String()
	if !e.At.IsZero() {
		line += ", at " + e.At.UTC().Format("15:04:05") + " UTC"
	}
	if why := endingWhy(e.Reason); why != "" {
		line += fmt.Sprintf(" (%s)", why)
	}
	return line
}

// endingWhy says what a reason means for the visitor.
func endingWhy(r etcdstore.EndReason) string {
	switch r {
	case etcdstore.EndLogout:
		return "this session was logged out"
	case etcdstore.EndLogoutEverywhere:
		return "you logged out everywhere from another device"
	case etcdstore.EndSessionLimit:
		return "you signed in on another device"
	case etcdstore.EndExpired:
		return "the session timed out"
	case etcdstore.EndRevoked:
		return "an administrator ended every session"
	}
	return ""
}
