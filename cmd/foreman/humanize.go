package main

import (
	"fmt"
	"math"
	"time"
)

// humanBytes renders a size the way `ollama list` does (powers of 1000).
func humanBytes(b int64) string {
	units := []struct {
		size float64
		name string
	}{{1e12, "TB"}, {1e9, "GB"}, {1e6, "MB"}, {1e3, "KB"}}
	for _, u := range units {
		if float64(b) < u.size {
			continue
		}
		v := float64(b) / u.size
		if v >= 10 || v == math.Trunc(v) {
			return fmt.Sprintf("%d %s", int(v), u.name)
		}
		return fmt.Sprintf("%.1f %s", v, u.name)
	}
	return fmt.Sprintf("%d B", b)
}

// humanDuration is ollama's wording: "5 seconds", "About a minute", "3 hours", "2 days".
func humanDuration(d time.Duration) string {
	s := int(d.Seconds())
	switch {
	case s < 1:
		return "Less than a second"
	case s == 1:
		return "1 second"
	case s < 60:
		return fmt.Sprintf("%d seconds", s)
	}
	m := int(d.Minutes())
	switch {
	case m == 1:
		return "About a minute"
	case m < 60:
		return fmt.Sprintf("%d minutes", m)
	}
	h := int(math.Round(d.Hours()))
	switch {
	case h == 1:
		return "About an hour"
	case h < 48:
		return fmt.Sprintf("%d hours", h)
	case h < 24*7*2:
		return fmt.Sprintf("%d days", h/24)
	case h < 24*30*2:
		return fmt.Sprintf("%d weeks", h/24/7)
	case h < 24*365*2:
		return fmt.Sprintf("%d months", h/24/30)
	}
	return fmt.Sprintf("%d years", h/24/365)
}

// humanTime is t relative to now: "3 minutes ago", "4 minutes from now", "Forever".
func humanTime(now, t time.Time, zero string) string {
	if t.IsZero() {
		return zero
	}
	d := now.Sub(t)
	switch {
	case d < -20*365*24*time.Hour:
		return "Forever"
	case d < 0:
		return humanDuration(-d) + " from now"
	}
	return humanDuration(d) + " ago"
}

// shortAge is a compact age for table columns: 45s, 3m, 2h, 5d.
func shortAge(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// shortDigest is the 12-character ID ollama shows for a digest.
func shortDigest(d string) string {
	if len(d) > 12 {
		return d[:12]
	}
	return d
}
