package main

import (
	"io"
	"math"
	"net/http"
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// FOREMAN_MAX_BODY_BYTES_IN_FLIGHT is four of the largest bodies unless set, must be a
// positive number of bytes, and may not be less than FOREMAN_MAX_BODY.
func TestConfigBodyBytesInFlight(t *testing.T) {
	t.Parallel()
	cases := []struct {
		args []string
		env  map[string]string
		want int64
	}{
		{want: 128 << 20},
		{env: map[string]string{"FOREMAN_MAX_BODY": "1048576"}, want: 4 << 20},
		{env: map[string]string{"FOREMAN_MAX_BODY_BYTES_IN_FLIGHT": "50000000"}, want: 50_000_000},
		{args: []string{"--max-body-bytes-in-flight=40000000"}, env: map[string]string{"FOREMAN_MAX_BODY_BYTES_IN_FLIGHT": "50000000"}, want: 40_000_000},
		{env: map[string]string{"FOREMAN_MAX_BODY": "1000", "FOREMAN_MAX_BODY_BYTES_IN_FLIGHT": "1000"}, want: 1000},
		// Four times a body limit this large would wrap: the default is as much as there is.
		{env: map[string]string{"FOREMAN_MAX_BODY": "3000000000000000000"}, want: math.MaxInt64},
		{env: map[string]string{"FOREMAN_MAX_BODY": "9223372036854775807"}, want: math.MaxInt64},
	}
	for _, c := range cases {
		cfg, err := parseConfig(t, c.args, c.env)
		if err != nil {
			t.Errorf("args %q env %v: %v", c.args, c.env, err)
			continue
		}
		if cfg.MaxBodyBytesInFlight != c.want {
			t.Errorf("args %q env %v: %d bytes in flight, want %d", c.args, c.env, cfg.MaxBodyBytesInFlight, c.want)
		}
	}
	bad := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{env: map[string]string{"FOREMAN_MAX_BODY_BYTES_IN_FLIGHT": "256MiB"}, want: `FOREMAN_MAX_BODY_BYTES_IN_FLIGHT="256MiB": not a positive number of bytes`},
		{env: map[string]string{"FOREMAN_MAX_BODY_BYTES_IN_FLIGHT": "0"}, want: `FOREMAN_MAX_BODY_BYTES_IN_FLIGHT="0": not a positive number of bytes`},
		{args: []string{"--max-body-bytes-in-flight=-5"}, want: `--max-body-bytes-in-flight="-5": not a positive number of bytes`},
		{env: map[string]string{"FOREMAN_MAX_BODY_BYTES_IN_FLIGHT": "1000"}, want: "FOREMAN_MAX_BODY_BYTES_IN_FLIGHT=1000 is less than FOREMAN_MAX_BODY=33554432"},
	}
	for _, c := range bad {
		_, err := parseConfig(t, c.args, c.env)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("args %q env %v: error %v, want %q", c.args, c.env, err, c.want)
		}
	}
}

// The setting reaches the gateway: /metrics shows the budget.
func TestServeBodyBytesInFlight(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	for line, env := range map[string]map[string]string{
		"foreman_request_body_bytes_in_flight_limit 3e+06": {"FOREMAN_MAX_BODY": "1000000", "FOREMAN_MAX_BODY_BYTES_IN_FLIGHT": "3000000"},
		"foreman_request_body_bytes_in_flight_limit 4e+06": {"FOREMAN_MAX_BODY": "1000000"},
	} {
		a := testApp(t, fake.URL, env)
		resp, err := http.Get("http://" + a.Addr() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(body), "\n"+line+"\n") {
			t.Errorf("with %v, /metrics has no %q", env, line)
		}
	}
}
