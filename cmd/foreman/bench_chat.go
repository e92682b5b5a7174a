package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	neturl "net/url"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// chatBench is `foreman bench chat`'s settings.
type chatBench struct {
	f                  *clientFlags
	direct, model      string
	also               []string
	prompt             string
	n, warmup, predict int
	stream             bool
	idle               time.Duration
}

// chatReport is what `foreman bench chat --json` prints.
type chatReport struct {
	Model   string  `json:"model"`
	Stream  bool    `json:"stream"`
	Measure string  `json:"measure"` // "answer" (whole non-streamed answer) or "first_byte"
	IdleMS  float64 `json:"idle_ms"`
	Foreman summary `json:"foreman"`
	Direct  summary `json:"direct"`
	// AddedP50 and AddedP99 are foreman's percentile minus direct's.
	AddedP50 float64 `json:"added_p50_ms"`
	AddedP99 float64 `json:"added_p99_ms"`
	// PairedP50 is the median of each pair's difference (foreman − direct).
	PairedP50 float64 `json:"paired_added_p50_ms"`
	// Also are the other foremen (--also), timed in the same rounds.
	Also []alsoReport `json:"also,omitempty"`
}

// alsoReport is one --also foreman's side of a chatReport.
type alsoReport struct {
	URL       string  `json:"url"`
	Times     summary `json:"times"`
	AddedP50  float64 `json:"added_p50_ms"`
	AddedP99  float64 `json:"added_p99_ms"`
	PairedP50 float64 `json:"paired_added_p50_ms"`
	// VsForemanP50 is the median of each round's difference from --url's time.
	VsForemanP50 float64 `json:"paired_vs_foreman_p50_ms"`
}

func newBenchChatCmd(e *env) *cobra.Command {
	b := &chatBench{}
	cmd := &cobra.Command{
		Use:   "chat --url FOREMAN --direct OLLAMA --model M",
		Short: "Time chats through foreman and straight to Ollama, alternately, and print the added latency",
		Long: "chat sends N chats to foreman (--url) and N to Ollama (--direct), alternately (foreman, Ollama,\n" +
			"foreman, Ollama, ...), after a few unmeasured warm-up pairs, each on a kept-alive connection.\n" +
			"Without --stream it times the whole non-streamed answer; with --stream the first byte of the\n" +
			"streamed answer. --idle pauses before every request of a pair, so each chat finds foreman's\n" +
			"worker idle. It prints p50 and p99 of both and what foreman adds.\n\n" +
			"--also URL (repeatable) times another foreman (another build, other settings) in the same\n" +
			"rounds, so that a before/after comparison meets the same moments of the machine; the order\n" +
			"within a round then rotates from one round to the next.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return b.run(cmd, e) },
	}
	b.f = addClientFlags(cmd, false)
	b.f.addTimeout(cmd, benchChatTimeout)
	cmd.Flags().Lookup("timeout").Usage = "give up when a chat, on any side (foreman, --also, --direct), has not answered whole within this long, a model's load or a wait behind other jobs included (0: wait for ever)"
	fs := cmd.Flags()
	fs.StringVar(&b.direct, "direct", "", "Ollama's URL, to compare with (required)")
	fs.StringArrayVar(&b.also, "also", nil, "another foreman's URL to time in the same rounds (repeatable)")
	fs.StringVarP(&b.model, "model", "m", "", "model to chat with (required)")
	fs.StringVar(&b.prompt, "prompt", "Say hello.", "the user message")
	fs.IntVarP(&b.n, "n", "n", 50, "measured chats per side")
	fs.IntVar(&b.warmup, "warmup", 3, "unmeasured pairs first (loads the model, opens the connections)")
	fs.IntVar(&b.predict, "tokens", 8, "options.num_predict of every chat (0: the model's default)")
	fs.BoolVar(&b.stream, "stream", false, "stream the answers and time the first byte")
	fs.DurationVar(&b.idle, "idle", 0, "pause before each request of a pair (e.g. 60ms): chats that find the worker idle")
	return cmd
}

func (b *chatBench) run(cmd *cobra.Command, e *env) error {
	switch {
	case b.direct == "":
		return errors.New("--direct: Ollama's URL is required")
	case b.model == "":
		return errors.New("--model is required")
	case b.n < 1 || b.warmup < 0 || b.predict < 0 || b.idle < 0:
		return errors.New("-n must be at least 1; --warmup, --tokens and --idle not negative")
	}
	body, err := b.body()
	if err != nil {
		return err
	}
	token := pick(b.f.token, e, "FOREMAN_TOKEN", "")
	direct := &chatSide{name: "direct", role: "straight to Ollama", url: strings.TrimRight(b.direct, "/") + "/api/chat", hc: keepAliveClient(1), ollama: true}
	sides := []*chatSide{{name: "foreman", role: "through foreman", url: strings.TrimRight(b.f.baseURL(e), "/") + "/api/chat", token: token, hc: keepAliveClient(1)}}
	for _, u := range b.also {
		var base string
		if err := httpURL(&base)(u); err != nil {
			return fmt.Errorf("--also %q: %w", ollama.RedactURL(u), err)
		}
		// Named, in errors and the report, without the credentials its URL may carry.
		sides = append(sides, &chatSide{name: ollama.RedactURL(base), role: "through --also foreman", url: base + "/api/chat", token: token, hc: keepAliveClient(1)})
	}
	sides = append(sides, direct)
	ctx := cmd.Context()
	for i := range b.warmup + b.n {
		for k := range sides {
			s := sides[k]
			if len(b.also) > 0 {
				s = sides[(i+k)%len(sides)] // rotated: no side always comes first after the pause
			}
			if err := pauseCtx(ctx, b.idle); err != nil {
				return err
			}
			rctx, cancel := b.f.perRequest(ctx)
			d, err := s.time(rctx, body, b.stream)
			cancel()
			if err != nil && ctx.Err() == nil && errors.Is(rctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("chat %s: %s", s.role, s.timedOut(b.f.timeout, errors.As(err, new(*answerBegan))))
			}
			if err != nil {
				// The error names the URL; the role says which side it is. (The side's
				// name, "foreman", made the CLI say "foreman: foreman: ...".)
				return fmt.Errorf("chat %s: %w", s.role, err)
			}
			if i >= b.warmup {
				s.took = append(s.took, d)
			}
		}
	}
	r := chatReport{
		Model: b.model, Stream: b.stream, Measure: "answer", IdleMS: ms(b.idle),
		Foreman: summarize(sides[0].took), Direct: summarize(direct.took),
	}
	if b.stream {
		r.Measure = "first_byte"
	}
	r.AddedP50, r.AddedP99 = round3(r.Foreman.P50-r.Direct.P50), round3(r.Foreman.P99-r.Direct.P99)
	r.PairedP50 = pairedP50(sides[0].took, direct.took)
	for _, s := range sides[1 : len(sides)-1] {
		t := summarize(s.took)
		r.Also = append(r.Also, alsoReport{
			URL: s.name, Times: t, AddedP50: round3(t.P50 - r.Direct.P50), AddedP99: round3(t.P99 - r.Direct.P99),
			PairedP50: pairedP50(s.took, direct.took), VsForemanP50: pairedP50(s.took, sides[0].took),
		})
	}
	if b.f.json {
		return printJSON(cmd.OutOrStdout(), r)
	}
	return r.print(cmd.OutOrStdout())
}

// pairedP50 is the median of the differences a[i] − b[i] (ms): times of the same rounds.
func pairedP50(a, b []time.Duration) float64 {
	d := make([]time.Duration, len(a))
	for i := range d {
		d[i] = a[i] - b[i]
	}
	return ms(percentile(slices.Sorted(slices.Values(d)), 0.5))
}

// body is the chat request both sides get.
func (b *chatBench) body() ([]byte, error) {
	req := map[string]any{
		"model":    b.model,
		"messages": []map[string]string{{"role": "user", "content": b.prompt}},
		"stream":   b.stream,
	}
	if b.predict > 0 {
		req["options"] = map[string]any{"num_predict": b.predict, "temperature": 0, "seed": 1}
	}
	return json.Marshal(req)
}

func (r chatReport) print(w io.Writer) error {
	what := "whole answer, not streamed"
	if r.Stream {
		what = "first byte, streamed"
	}
	fmt.Fprintf(w, "chat %s: %d pairs, %s, idle %s\n", r.Model, r.Foreman.N, what, time.Duration(r.IdleMS*float64(time.Millisecond)))
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\tp50\tp99\tmean\t")
	fmt.Fprintf(tw, "foreman\t%s\t%s\t%s\t\n", fmtMS(r.Foreman.P50), fmtMS(r.Foreman.P99), fmtMS(r.Foreman.Mean))
	fmt.Fprintf(tw, "direct\t%s\t%s\t%s\t\n", fmtMS(r.Direct.P50), fmtMS(r.Direct.P99), fmtMS(r.Direct.Mean))
	fmt.Fprintf(tw, "added\t%s\t%s\t\t\n", fmtAdded(r.AddedP50), fmtAdded(r.AddedP99))
	if err := tw.Flush(); err != nil {
		return err
	}
	if _, err := fmt.Fprintf(w, "median of the pairs' differences: %s\n", fmtAdded(r.PairedP50)); err != nil {
		return err
	}
	for _, a := range r.Also {
		if _, err := fmt.Fprintf(w, "also %s: p50 %s p99 %s, added %s / %s, median difference %s from direct, %s from --url\n",
			a.URL, fmtMS(a.Times.P50), fmtMS(a.Times.P99), fmtAdded(a.AddedP50), fmtAdded(a.AddedP99),
			fmtAdded(a.PairedP50), fmtAdded(a.VsForemanP50)); err != nil {
			return err
		}
	}
	return nil
}

// chatSide is one end of the comparison and the times taken there.
type chatSide struct {
	// name is the side in the report; role says it in an error ("through foreman").
	name, role, url, token string
	hc                     *http.Client
	took                   []time.Duration
	// ollama marks the --direct side, whose failures point at --direct, not foreman.
	ollama bool
}

// unreachable is the error of a chat that did not reach the side, said as clientFlags.explain
// says a command's: the cause and its hint, not Go's `Post "…": dial tcp …`.
func (s *chatSide) unreachable(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err() // interrupted: run says so
	}
	hint := unreachableHint(err)
	if s.ollama {
		hint = "is Ollama running there? check --direct"
	}
	return errors.New(unreachableAt(s.base(), s.url, err, hint))
}

// timedOut says that the side gave no whole answer within limit (--timeout): none at
// all, or, began, one that did not end (a stream that stopped, or runs longer).
func (s *chatSide) timedOut(limit time.Duration, began bool) string {
	if began {
		hint := "its stream stopped, or runs longer (fewer --tokens); see foreman's log"
		if s.ollama {
			hint = "its stream stopped, or runs longer (fewer --tokens); check --direct"
		}
		return fmt.Sprintf("the answer from %s began but did not end within %s (--timeout): %s", termSafe(s.base()), limit, hint)
	}
	hint := "foreman or its job store may be hung, or the chat waits behind other jobs; see its log and /queue"
	if s.ollama {
		hint = "is Ollama hung, or still loading the model? check --direct"
	}
	return noAnswerWithin(s.base(), limit, hint)
}

// answerBegan is the error of an answer whose 200 came and whose body did not end.
type answerBegan struct{ err error }

func (e *answerBegan) Error() string { return e.err.Error() }
func (e *answerBegan) Unwrap() error { return e.err }

// refused is the error of an answer other than 200 (refusedBy).
func (s *chatSide) refused(code int, body []byte) error {
	return errors.New(refusedBy(s.base(), code, body, s.ollama))
}

// unreachableAt says that a request to url (base, as shown) did not reach it: the cause
// without Go's `Post "url": dial tcp …` around it, and hint.
func unreachableAt(base, url string, err error, hint string) string {
	var ue *neturl.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return fmt.Sprintf("cannot reach %s: %s — %s", termSafe(base), termSafe(rootCause(ollama.RedactError(err, url))), hint)
}

// refusedBy says an answer other than the one wanted from base: its {"error": "..."} as
// a sentence (with what to do about a 401 of foreman's), else a page that is not
// foreman's (or Ollama's, for ollamaSide) as notForeman says it, not the raw body.
func refusedBy(base string, code int, body []byte, ollamaSide bool) string {
	var e struct {
		Error string `json:"error"`
	}
	status := fmt.Sprintf("%d %s", code, http.StatusText(code))
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		msg, hint := e.Error, ""
		if code == http.StatusUnauthorized && !ollamaSide {
			// foreman's own message starts "unauthorized: " already; said once.
			msg, hint = strings.TrimPrefix(msg, "unauthorized: "), " (set FOREMAN_TOKEN or --token)"
		}
		return fmt.Sprintf("%s answered %s: %s%s", termSafe(base), status, termSafe(msg), hint)
	}
	if ollamaSide {
		ex := strings.Join(strings.Fields(string(body)), " ")
		if len([]rune(ex)) > foreignExcerpt {
			ex = string([]rune(ex)[:foreignExcerpt]) + "…"
		}
		return fmt.Sprintf("%s answered %s with %q, which does not look like Ollama: check --direct", termSafe(base), status, termSafe(ex))
	}
	return notForeman(termSafe(base), code, "", string(body)).Error()
}

// base is the side's URL as the user gave it, without /api/chat and credentials.
func (s *chatSide) base() string {
	return ollama.RedactURL(strings.TrimSuffix(s.url, "/api/chat"))
}

// time sends one chat and returns the time to its whole answer, or to the first byte of
// the body when stream is set (the rest is read untimed, so the connection is reused).
func (s *chatSide) time(ctx context.Context, body []byte, stream bool) (time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		return 0, ollama.RedactError(err, s.url)
	}
	req.Header.Set("Content-Type", "application/json")
	if s.token != "" {
		req.Header.Set("Authorization", "Bearer "+s.token)
	}
	start := time.Now()
	resp, err := s.hc.Do(req)
	if err != nil {
		return 0, s.unreachable(ctx, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return 0, s.refused(resp.StatusCode, bytes.TrimSpace(msg))
	}
	var took time.Duration
	if stream {
		var one [1]byte
		for took == 0 {
			n, err := resp.Body.Read(one[:])
			if n > 0 {
				took = time.Since(start)
			} else if err != nil {
				return 0, &answerBegan{fmt.Errorf("%s: empty answer: %w", ollama.RedactURL(s.url), err)}
			}
		}
	}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return 0, &answerBegan{fmt.Errorf("%s: read answer: %w", ollama.RedactURL(s.url), err)}
	}
	if !stream {
		took = time.Since(start)
	}
	return took, nil
}

// round3 rounds milliseconds to microseconds.
func round3(v float64) float64 { return math.Round(v*1000) / 1000 }
