package client_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// A password or token in foreman's URL or NATS URL shows in no error of the client.
func TestErrorsHideURLCredentials(t *testing.T) {
	t.Parallel()
	const password = "s3cret"
	closed := ollamatest.ClosedAddr(t)

	var errs []error
	for _, base := range []string{"http://user:" + password + "@" + closed, "http://" + password + "@" + closed} {
		c, err := client.New(base)
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Tags(testCtx(t))
		var ce *client.ConnectionError
		if !errors.As(err, &ce) || !strings.Contains(ce.URL, "xxxxx@") {
			t.Errorf("Tags against %s: %v, want a *ConnectionError with the URL redacted", base, err)
		}
		errs = append(errs, err)
		_, err = c.Job(testCtx(t), "01JABCDEFGHJKMNPQRSTVWXYZ0")
		errs = append(errs, err)
	}
	_, err := client.New("ftp://user:" + password + "@host")
	errs = append(errs, err)
	_, err = client.New("http://127.0.0.1:8080", client.WithNATSURL("nats://app:"+password+"@"+closed))
	errs = append(errs, err)
	_, err = client.New("http://127.0.0.1:8080", client.WithNATSURL("nats://"+password+"@"+closed))
	errs = append(errs, err)
	// A URL nats.go cannot parse: its error quotes the URL given, a bad escape's text too.
	_, err = client.New("http://127.0.0.1:8080", client.WithNATSURL("nats://app:s3c%zzret@"+closed))
	if err == nil || strings.Contains(err.Error(), "s3c") || strings.Contains(err.Error(), "zzret") {
		t.Errorf("a NATS URL with a bad escape in the password: %v", err)
	}
	// A comma in the password: refused before NATS would split the URL there (and look up
	// "app" as a host, or send "s3cret" as a token).
	_, err = client.New("http://127.0.0.1:8080", client.WithNATSURL("nats://app:f1rst,"+password+"@"+closed))
	if err == nil || !strings.Contains(err.Error(), "%2C") || strings.Contains(err.Error(), "f1rst") {
		t.Errorf("a NATS URL with a comma in the password: %v", err)
	}
	errs = append(errs, err)
	// A quote in the password, with TLS on (nats.go gives an entry without a scheme tls://),
	// and a "/" in a token, which url.Parse takes for a host and a path (localhost here:
	// a regression must not send a lookup off the machine).
	_, err = client.New("http://127.0.0.1:8080", client.WithNATSURL(`app:pa"`+password+"@"+closed, nats.Secure()))
	errs = append(errs, err)
	_, err = client.New("http://localhost/" + password + "@" + closed)
	errs = append(errs, err)
	_, err = client.New("http://127.0.0.1:8080", client.WithNATSURL("nats://localhost/"+password+"@"+closed))
	errs = append(errs, err)
	for _, err := range errs {
		if err == nil {
			t.Fatal("a call that cannot succeed did")
		}
		if strings.Contains(err.Error(), password) {
			t.Errorf("error shows the password: %v", err)
		}
	}
}
