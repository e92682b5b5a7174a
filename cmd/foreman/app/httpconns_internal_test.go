package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// The connections the HTTP server is done with (closed, or hijacked by a handler) are
// forgotten: a foreman that served many connections does not keep one entry for each,
// and a hijacked connection is not taken for a request still being answered.
func TestHTTPConnsForgetsConnectionsTheServerIsDoneWith(t *testing.T) {
	t.Parallel()
	var conns httpConns
	done := make(chan http.ConnState, 1)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n := conns.active(); n != 1 {
			t.Errorf("%s: %d connections active while its request is answered, want 1", r.URL.Path, n)
		}
		if r.URL.Path == "/hijack" {
			if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
				_ = c.Close()
			}
		}
	}))
	srv.Config.ConnState = func(c net.Conn, st http.ConnState) {
		conns.track(c, st)
		if st == http.StateClosed || st == http.StateHijacked {
			done <- st
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	t.Cleanup(client.CloseIdleConnections)
	for _, c := range []struct {
		path string
		want http.ConnState
	}{{"/", http.StateClosed}, {"/hijack", http.StateHijacked}} {
		if resp, err := client.Get(srv.URL + c.path); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
		}
		select {
		case st := <-done:
			if st != c.want {
				t.Fatalf("%s: connection %v, want %v", c.path, st, c.want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the server never let go of the connection", c.path)
		}
		conns.mu.Lock()
		n := len(conns.state)
		conns.mu.Unlock()
		if n != 0 || conns.active() != 0 {
			t.Errorf("%s: %d connections remembered (%d active) after the server let go of it, want none", c.path, n, conns.active())
		}
	}
}

// A shutdown that ran out of time, or was canceled, fails only for a request still
// being answered; any other failure of the HTTP server's shutdown is one.
func TestHTTPShutdownError(t *testing.T) {
	t.Parallel()
	a := &App{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, err := range []error{context.DeadlineExceeded, context.Canceled, fmt.Errorf("wait: %w", context.DeadlineExceeded)} {
		if got := a.httpShutdownError(err); got != nil {
			t.Errorf("%v with no request being answered: %v, want no failure", err, got)
		}
	}
	if got := a.httpShutdownError(errors.New("close tcp 127.0.0.1:80: bad file descriptor")); got == nil {
		t.Error("a listener's failure to close: no failure")
	}
	c, peer := net.Pipe()
	defer c.Close()
	defer peer.Close()
	a.conns.track(c, http.StateNew)
	a.conns.track(c, http.StateActive)
	if got := a.httpShutdownError(context.DeadlineExceeded); got == nil || !strings.Contains(got.Error(), "requests still being answered (1)") ||
		!errors.Is(got, context.DeadlineExceeded) {
		t.Errorf("deadline with a request being answered: %v, want it named", got)
	}
}
