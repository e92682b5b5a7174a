package gateway

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// rawGET sends "GET target HTTP/1.1" on a connection of its own, target as written: a
// Go client would not send a "#" in a query.
func (b *testBundle) rawGET(t *testing.T, target string) (*http.Response, []byte) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(b.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second)) // a broken build must not hang the test
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", target); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("GET %s: no answer: %v", target, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

// A query is passed on as the client sent it, whatever it holds: Go's server leaves a "#"
// in it (a request has no fragment), and the query must reach the target whole, not be
// cut at the "#" or refused for what follows it.
func TestPassThroughQueryWithHash(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	for _, c := range []struct{ path, query string }{
		{"/api/version", "a#b"},
		{"/api/version", "x#%zz"},
		{"/v1/models/tiny-a:latest", "q=1#%zz&r"},
	} {
		resp, body := b.rawGET(t, c.path+"?"+c.query)
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s?%s: %d %s", c.path, c.query, resp.StatusCode, body)
			continue
		}
		var got []string
		for _, call := range b.Fake.Calls() {
			if call.Path == c.path {
				got = append(got, call.RawQuery)
			}
		}
		if len(got) == 0 || got[len(got)-1] != c.query {
			t.Errorf("%s?%s: the target saw the queries %q", c.path, c.query, got)
		}
	}
}
