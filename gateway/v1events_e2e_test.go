package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// OpenAI's Responses API and Anthropic's Messages API, which Ollama serves on its chat:
// through foreman they answer as Ollama does, streamed or not, errors included, and a
// streamed job's stored result is the answer the same request without stream gets.
func TestE2EResponsesAndMessagesMatchDirect(t *testing.T) {
	b := newE2EBundle(t, nil)
	ctx := testCtx(t, 2*time.Minute)
	b.warm(t, ctx, "tiny-a")
	routes := []struct {
		path, body string
		text       func(t *testing.T, answer []byte) string // the reply text of a non-streamed answer
	}{
		{"/v1/responses", `{"model":"tiny-a","input":"tell me about the sea","max_output_tokens":12,"temperature":0%s}`, responseText},
		{"/v1/messages", `{"model":"tiny-a","max_tokens":12,"temperature":0,"messages":[{"role":"user","content":"tell me about the sea"}]%s}`, messageText},
	}
	for _, rt := range routes {
		plain := []byte(strings.Replace(rt.body, "%s", "", 1))
		via, direct := post(t, ctx, b.URL, rt.path, plain), post(t, ctx, b.Target, rt.path, plain)
		if via.Status != 200 || direct.Status != 200 || via.CType != direct.CType || via.Header.Get(HeaderJobID) == "" {
			t.Fatalf("%s: foreman %d %q %s, direct %d %q %s", rt.path, via.Status, via.CType, via.Body, direct.Status, direct.CType, direct.Body)
		}
		want := rt.text(t, direct.Body)
		if got := rt.text(t, via.Body); got != want || want == "" {
			t.Errorf("%s: text %q through foreman, %q direct", rt.path, got, want)
		}
		if vk, dk := topKeys(t, via.Body), topKeys(t, direct.Body); !slices.Equal(vk, dk) {
			t.Errorf("%s: members %v through foreman, %v direct", rt.path, vk, dk)
		}

		streamed := []byte(strings.Replace(rt.body, "%s", `,"stream":true`, 1))
		via, direct = post(t, ctx, b.URL, rt.path, streamed), post(t, ctx, b.Target, rt.path, streamed)
		if via.Status != 200 || direct.Status != 200 || via.CType != direct.CType || !strings.HasPrefix(via.CType, "text/event-stream") {
			t.Fatalf("%s stream: foreman %d %q %s, direct %d %q %s", rt.path, via.Status, via.CType, via.Body, direct.Status, direct.CType, direct.Body)
		}
		if ve, de := eventTypes(via.Body), eventTypes(direct.Body); !slices.Equal(ve, de) || len(de) < 3 {
			t.Errorf("%s stream: events %v through foreman, %v direct", rt.path, ve, de)
		}
		// The streamed job's result is the non-streamed answer.
		res := jobResult(t, ctx, b.Store, via.Header.Get(HeaderJobID))
		if got := rt.text(t, res); got != want {
			t.Errorf("%s stream: stored result text %q, want %q: %s", rt.path, got, want, res)
		}
		if rk, dk := topKeys(t, res), topKeys(t, post(t, ctx, b.Target, rt.path, plain).Body); !slices.Equal(rk, dk) {
			t.Errorf("%s stream: stored result members %v, a non-streamed answer's %v", rt.path, rk, dk)
		}
	}

	// Errors in each API's own shape: a model neither has, and (the target's own check)
	// an Anthropic request without max_tokens.
	for _, c := range []struct{ path, body string }{
		{"/v1/responses", `{"model":"no-such-model","input":"hi"}`},
		{"/v1/messages", `{"model":"no-such-model","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`},
		{"/v1/messages", `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`},
	} {
		via, direct := post(t, ctx, b.URL, c.path, []byte(c.body)), post(t, ctx, b.Target, c.path, []byte(c.body))
		if via.Status != direct.Status || via.Status < 400 {
			t.Errorf("%s %s: foreman %d %s, direct %d %s", c.path, c.body, via.Status, via.Body, direct.Status, direct.Body)
			continue
		}
		vt, vm := errorShape(t, via.Body)
		dt, dm := errorShape(t, direct.Body)
		if vt != dt || vm != dm {
			t.Errorf("%s %s: error (%s, %q) through foreman, (%s, %q) direct", c.path, c.body, vt, vm, dt, dm)
		}
	}
}

func responseText(t *testing.T, answer []byte) string {
	t.Helper()
	var r struct {
		Output []struct {
			Content []struct {
				Text string `json:"text"`
			} `json:"content"`
		} `json:"output"`
	}
	if err := json.Unmarshal(answer, &r); err != nil {
		t.Fatalf("response %s: %v", answer, err)
	}
	var sb strings.Builder
	for _, o := range r.Output {
		for _, c := range o.Content {
			sb.WriteString(c.Text)
		}
	}
	return sb.String()
}

func messageText(t *testing.T, answer []byte) string {
	t.Helper()
	var m struct {
		Content []struct {
			Text string `json:"text"`
		} `json:"content"`
		StopReason string `json:"stop_reason"`
	}
	if err := json.Unmarshal(answer, &m); err != nil {
		t.Fatalf("message %s: %v", answer, err)
	}
	var sb strings.Builder
	for _, c := range m.Content {
		sb.WriteString(c.Text)
	}
	return sb.String() + " [" + m.StopReason + "]"
}

// topKeys is the sorted member names of a JSON object.
func topKeys(t *testing.T, b []byte) []string {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	return keys(m)
}

// eventTypes is the "event:" names of an SSE body in order.
func eventTypes(body []byte) []string {
	var out []string
	for line := range bytes.Lines(body) {
		if name, ok := bytes.CutPrefix(bytes.TrimSpace(line), []byte("event:")); ok {
			out = append(out, string(bytes.TrimSpace(name)))
		}
	}
	return out
}

// errorShape is an error body's type (the OpenAI error.type, or Anthropic's type and
// error.type) and message.
func errorShape(t *testing.T, body []byte) (typ, msg string) {
	t.Helper()
	var e struct {
		Type  string `json:"type"`
		Error struct {
			Type    string `json:"type"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("error body %s: %v", body, err)
	}
	return e.Type + "/" + e.Error.Type, e.Error.Message
}

// jobResult waits for job id to end (a sync answer may end before its record does,
// ADR-0038) and returns its stored result.
func jobResult(t *testing.T, ctx context.Context, store *broker.Store, id string) []byte {
	t.Helper()
	j := waitRecord(t, ctx, store, id, func(j *broker.Job) bool { return j.State.Terminal() })
	if j.State != broker.StateDone {
		t.Fatalf("job %s ended %s: %s", id, j.State, j.Error)
	}
	return j.Result
}
