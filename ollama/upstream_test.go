package ollama_test

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// A proxy in front of Ollama (nginx, Caddy, tailscale serve) answers 502 or 504 when the
// Mac behind it is off or hung: the target is not there, for a call and for a poll
// alike, and the error keeps the status. Any other status is an answer (Ollama's, or a
// proxy passing only the model calls).
func TestProxyGatewayErrorIsUnreachable(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		code int
		down bool
	}{
		{http.StatusBadGateway, true},
		{http.StatusGatewayTimeout, true},
		{http.StatusInternalServerError, false},
		{http.StatusServiceUnavailable, false},
		{http.StatusNotFound, false},
	} {
		t.Run(fmt.Sprint(c.code), func(t *testing.T) {
			t.Parallel()
			fake := ollamatest.New(t)
			client := newClient(t, fake.URL)
			inv := ollama.NewInventory(ollama.InventoryConfig{Client: client})
			if err := inv.Refresh(testCtx(t)); err != nil {
				t.Fatal(err)
			}
			fake.SetDownWith(ollamatest.ProxyError(c.code))

			_, err := client.Stream(testCtx(t), "/api/chat", []byte(`{"model":"tiny-a","messages":[]}`), func([]byte) error { return nil })
			var he *ollama.HTTPError
			if !errors.As(err, &he) || he.StatusCode != c.code || ollama.Unreachable(err) != c.down {
				t.Fatalf("chat: %v; want an HTTPError %d, unreachable %v", err, c.code, c.down)
			}
			if want := fmt.Sprintf("HTTP %d", c.code); !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %s", err, want)
			}
			// The proxy's page is told by its title, not its markup.
			if want := fmt.Sprintf("%d %s", c.code, http.StatusText(c.code)); he.Message != want {
				t.Errorf("message %q, want the page's title %q", he.Message, want)
			}

			err = inv.Refresh(testCtx(t))
			snap := inv.Snapshot()
			if err == nil || !snap.Degraded || ollama.Unreachable(err) != c.down || snap.DownSince.IsZero() == c.down {
				t.Fatalf("poll: %v, degraded %v, down since %v; want unreachable %v", err, snap.Degraded, snap.DownSince, c.down)
			}

			fake.SetDownWith(ollamatest.Failure{})
			if err := inv.Refresh(testCtx(t)); err != nil || !inv.Snapshot().DownSince.IsZero() {
				t.Fatalf("poll once the Mac is back: %v, down since %v", err, inv.Snapshot().DownSince)
			}
		})
	}
}

// A page whose bytes change length when lower-cased (invalid UTF-8 of a Latin-1 page, 'İ',
// the Kelvin sign) before its title: the title was cut at positions of the lower-cased
// copy, out of range (a panic in the poll or the worker) or beside the title.
func TestProxyPageTitleWhateverItsBytes(t *testing.T) {
	t.Parallel()
	for _, before := range []string{strings.Repeat("\xff", 10), strings.Repeat("İ", 10), strings.Repeat("\u212a", 10)} {
		page := "<html><head><meta name=\"x\" content=\"" + before + "\"><TITLE>502 Bad Gateway</TITLE></head><body>" + before + "</body></html>"
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusBadGateway)
			_, _ = w.Write([]byte(page))
		}))
		_, err := newClient(t, srv.URL).Stream(testCtx(t), "/api/chat", []byte(`{"model":"tiny-a","messages":[]}`), func([]byte) error { return nil })
		srv.Close()
		var he *ollama.HTTPError
		if !errors.As(err, &he) || he.Message != "502 Bad Gateway" {
			t.Errorf("page with %q: %v, want the title", before, err)
		}
	}
}

// A non-2xx answer's message is Ollama's {"error": "..."} text; any other body is told
// as it came, trimmed, except a proxy's page, which is told by a title it has.
func TestHTTPErrorMessageOfItsBody(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ body, want string }{
		{`{"error":"model \"x\" not found"}`, `model "x" not found`},
		{`{"detail":"no such route"}`, `{"detail":"no such route"}`},
		{"  upstream went away\n", "upstream went away"},
		{"<title>502 Bad Gateway</title>", "502 Bad Gateway"},
		{"<html><title> </title><body>down</body></html>", "<html><title> </title><body>down</body></html>"},
		{"<html><title>half a title", "<html><title>half a title"},
		{"", ""}, // told by its status text
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = w.Write([]byte(c.body))
		}))
		_, err := newClient(t, srv.URL).Stream(testCtx(t), "/api/chat", []byte(`{"model":"tiny-a","messages":[]}`), func([]byte) error { return nil })
		srv.Close()
		var he *ollama.HTTPError
		if !errors.As(err, &he) || he.Message != c.want {
			t.Errorf("body %q: %v, want the message %q", c.body, err, c.want)
		}
		if c.body == "" && (err == nil || err.Error() != "ollama: HTTP 500 Internal Server Error") {
			t.Errorf("empty body: %q, want the status text", err)
		}
	}
}
