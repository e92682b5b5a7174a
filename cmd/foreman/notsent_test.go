package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// A request of a wait whose connection is not made within --timeout (a host whose
// packets are dropped) is said as README says it: "cannot reach", with the hint of a
// host that does not answer, not `is "foreman serve" running?`, the hint of a refused
// connection, which says the opposite of what happened.
func TestARequestNotSentInTimeIsAHostThatDidNotAnswer(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(srv.Close)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		select { // every dial hangs: packets dropped
		case <-ctx.Done():
		case <-release:
		}
		return nil, errors.New("dial let go")
	}
	c, err := client.New(srv.URL, client.WithHTTPClient(&http.Client{Transport: tr}), client.WithPollingOnly(),
		client.WithAnswerTimeout(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, submitErr := c.Submit(ctx, client.SubmitRequest{Chat: &client.ChatRequest{Model: "tiny-a", Messages: []client.Message{{Role: "user", Content: "hi"}}}})
	_, waitErr := c.Wait(ctx, "01HZX3K4M5N6P7Q8R9S0T1V2W3")
	f := &clientFlags{url: srv.URL, timeout: 50 * time.Millisecond}
	e := &env{getenv: func(string) string { return "" }}
	for what, err := range map[string]error{"submit": submitErr, "a read of the job": waitErr} {
		msg := f.explain(e, err).Error()
		if !strings.HasPrefix(msg, "cannot reach ") || !strings.Contains(msg, "the host did not answer") {
			t.Errorf("%s not sent in time: %q; want cannot reach … the host did not answer", what, msg)
		}
	}
}
