package client_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"unicode/utf8"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// TestAnAnswerNotForemansIsShortAndMatchesNoRefusal: a proxy's or a router's error page
// (no {"error": ...} JSON) is an *APIError whose Error names its status and quotes only
// its start (it was the whole page, up to 64 KiB, on one log line), and a 404 page of that
// kind is no ErrNotFound: it says nothing of the job asked for.
func TestAnAnswerNotForemansIsShortAndMatchesNoRefusal(t *testing.T) {
	t.Parallel()
	page := "<html><head><title>404 Not Found</title></head><body>" + strings.Repeat("<p>padding</p>\n", 4000) + "</body></html>"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(page))
	}))
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL, client.WithPollingOnly())
	_, err := c.Job(testCtx(t), "01JGJ4Q2R0000000000000000A")
	var ae *client.APIError
	if !errors.As(err, &ae) || !ae.Raw {
		t.Fatalf("Job through a proxy's 404 page: %v, want a Raw *APIError", err)
	}
	if errors.Is(err, client.ErrNotFound) {
		t.Errorf("a proxy's 404 page matches ErrNotFound")
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "404 Not Found, an answer not foreman's: <html>") || utf8.RuneCountInString(msg) > 300 || strings.Contains(msg, "\n") {
		t.Errorf("Error() = %d characters: %.120q…, want its status and a one-line excerpt", utf8.RuneCountInString(msg), msg)
	}
	if len(ae.Message) < 60000 {
		t.Errorf("Message kept %d bytes of the page, want it whole (up to 64 KiB)", len(ae.Message))
	}
}
