package gateway

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// A request that declares a body its route never reads (a GET with a Content-Length, a
// 401, a 404), whose client then sends nothing of it, gets its answer once
// BodyReadTimeout has passed, and the connection is closed. net/http
// reads such a body before it sends the answer (to keep the connection), and again after
// it, and has no deadline for it: the answer never came, and the connection and its
// goroutine stayed for as long as the client kept them, past every timeout foreman sets,
// and a shutdown waited on them as on requests being answered.
func TestAnUnreadBodyThatNeverComesHoldsNothing(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withGateway(func(c *Config) {
		c.AuthToken = "s3cret"
		c.BodyReadTimeout = 200 * time.Millisecond
	}))
	host := "Host: localhost\r\n"
	auth := "Authorization: Bearer s3cret\r\n"
	for _, c := range []struct {
		name, request string
		status        int
	}{
		{"a GET declaring a body", "GET /api/version HTTP/1.1\r\n" + host + auth + "Content-Length: 100\r\n\r\n", http.StatusOK},
		{"a GET with a chunked body", "GET /jobs HTTP/1.1\r\n" + host + auth + "Transfer-Encoding: chunked\r\n\r\n", http.StatusOK},
		{"no token", "POST /api/chat HTTP/1.1\r\n" + host + "Content-Length: 100\r\n\r\n", http.StatusUnauthorized},
		{"no route", "POST /nowhere HTTP/1.1\r\n" + host + auth + "Content-Length: 100\r\n\r\n", http.StatusNotFound},
		{"a cancel with a body", "DELETE /jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV HTTP/1.1\r\n" + host + auth + "Content-Length: 10\r\n\r\n", http.StatusNotFound},
		{"waiting for 100 Continue", "POST /nowhere HTTP/1.1\r\n" + host + auth + "Expect: 100-continue\r\nContent-Length: 100\r\n\r\n", http.StatusNotFound},
	} {
		conn, err := net.Dial("tcp", strings.TrimPrefix(b.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		// Far past BodyReadTimeout: the answer and the close are bounded by it.
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(conn, c.request); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			conn.Close()
			t.Errorf("%s: no answer: %v", c.name, err)
			continue
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Errorf("%s: answer's body: %v", c.name, err)
		}
		if resp.StatusCode != c.status {
			t.Errorf("%s: %d %s, want %d", c.name, resp.StatusCode, body, c.status)
		}
		if resp.StatusCode >= 400 {
			var e struct{ Error string }
			if json.Unmarshal(body, &e) != nil || e.Error == "" {
				t.Errorf("%s: %d %q, want a JSON error", c.name, resp.StatusCode, body)
			}
		}
		// The connection ends (the body it declared would be read as the next request).
		if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
			t.Errorf("%s: after the answer: %v, want the connection closed", c.name, err)
		}
		conn.Close()
	}
}

// A body its route does not read but that its client sends in full keeps the connection
// for the next request, as before: net/http reads it out.
func TestAnUnreadBodySentInFullKeepsTheConnection(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	conn, err := net.Dial("tcp", strings.TrimPrefix(b.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	for i := range 2 {
		if _, err := io.WriteString(conn, "GET /api/version HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello"); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != http.StatusOK || resp.Close {
			t.Fatalf("request %d: %d, close %v; want 200 on a kept connection", i, resp.StatusCode, resp.Close)
		}
	}
}
