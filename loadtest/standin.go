package main

import (
	"fmt"
	"net/http"

	"github.com/alexedwards/scs/v2"
)

// newStandInApp serves /put and /get behind sm.LoadAndSave: /put?value=V
// keeps V in the session, /get shows it. It stands in for the example
// app's handler.
func newStandInApp(sm *scs.SessionManager) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /put", func(w http.ResponseWriter, r *http.Request) {
		sm.Put(r.Context(), "value", r.URL.Query().Get("value"))
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /get", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "value: %s\n", sm.GetString(r.Context(), "value"))
	})
	return sm.LoadAndSave(mux)
}
