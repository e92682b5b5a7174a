package client_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// Submit's webhook receiver may listen on the LAN (WithWebhookListenAddr), where anyone
// can connect: a connection holds it only as long as a delivery takes. A request that
// declares a body and sends none of it is answered and closed, a kept-alive connection
// that sends no next request is closed, and headers past the receiver's bound are 431.
// The receiver had no bound on any: such connections stayed for as long as the wait
// (hours, a job's), each a goroutine and a file descriptor of the program using the
// client, headers of up to net/http's 1 MiB each.
func TestWebhookReceiverHoldsNoIdleOrStalledConnection(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{WebhookSecret: testSecret})
	c := newClient(t, f.URL, client.WithWebhookSecret(testSecret), client.WithPollInterval(never))
	client.SetWebhookReceiverBounds(c, 200*time.Millisecond, 200*time.Millisecond)
	release := f.Fake.Hold("tiny-a")
	t.Cleanup(release)
	hooks := make(chan string, 1)
	client.SetOnWebhookListen(c, func(u string) { hooks <- u })
	ctx := testCtx(t)
	done := make(chan error, 1)
	go func() {
		_, err := c.Submit(ctx, chatJob("tiny-a", "hooked"))
		done <- err
	}()
	var hook string
	select {
	case hook = <-hooks:
	case <-ctx.Done():
		t.Fatal("Submit started no webhook receiver")
	}
	u, err := url.Parse(hook)
	if err != nil {
		t.Fatal(err)
	}
	// answerThenEnd sends request on a connection of its own and wants an answer of
	// status, then the connection closed, all well before the test's deadline.
	answerThenEnd := func(name, request string, status int) {
		t.Helper()
		conn, err := net.Dial("tcp", u.Host)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		go func() { _, _ = io.WriteString(conn, request) }() // a 431 may come before all is sent
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Errorf("%s: no answer: %v", name, err)
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != status {
			t.Errorf("%s: %d, want %d", name, resp.StatusCode, status)
		}
		if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
			t.Errorf("%s: after the answer: %v, want the connection closed", name, err)
		}
	}
	host := "Host: " + u.Host + "\r\n"
	answerThenEnd("a body declared and never sent", "POST /elsewhere HTTP/1.1\r\n"+host+"Content-Length: 100\r\n\r\n", http.StatusNotFound)
	answerThenEnd("a delivery's body never sent", "POST "+u.Path+" HTTP/1.1\r\n"+host+"Content-Length: 100\r\n\r\n", http.StatusBadRequest)
	answerThenEnd("a kept-alive connection left idle", "GET /elsewhere HTTP/1.1\r\n"+host+"\r\n", http.StatusNotFound)
	answerThenEnd("headers past the bound", fmt.Sprintf("GET /elsewhere HTTP/1.1\r\n%sX-Pad: %s\r\n\r\n", host, strings.Repeat("v", 128<<10)),
		http.StatusRequestHeaderFieldsTooLarge)

	release()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Submit: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("Submit did not end after its job ran")
	}
}
