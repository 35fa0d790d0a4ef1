package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// portRange is a flag value "LO-HI", or "off" for none.
type portRange struct{ lo, hi int }

func (p *portRange) String() string {
	if p.lo == 0 {
		return "off"
	}
	return fmt.Sprintf("%d-%d", p.lo, p.hi)
}

func (p *portRange) Set(s string) error {
	if s == "off" || s == "" {
		*p = portRange{}
		return nil
	}
	los, his, ok := strings.Cut(s, "-")
	lo, err1 := strconv.Atoi(los)
	hi, err2 := strconv.Atoi(his)
	if !ok || err1 != nil || err2 != nil || lo < 1 || hi > 65535 || lo > hi {
		return errors.New("want LO-HI with 1 <= LO <= HI <= 65535, or off")
	}
	*p = portRange{lo, hi}
	return nil
}

// byteSize is a flag value in bytes that accepts KiB, MiB and GiB suffixes.
type byteSize int64

func (b *byteSize) String() string { return strconv.FormatInt(int64(*b), 10) }

func (b *byteSize) Set(s string) error {
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return errors.New("want a size in bytes, optionally with KiB, MiB, GiB or TiB")
	}
	*b = byteSize(n * mult)
	return nil
}
