# bench/plot.gp: the PNGs of bench/run, from the data files it writes (medians).
#   gnuplot -e "dat='FILE'; out='PNG'; names='sluice hitch ...'; what='keepalive'" bench/plot.gp
# what = 'keepalive': rows "body_bytes rate1 cpu1 rate2 cpu2 ..." (one pair per name);
#        two panels, requests/s and proxy CPU µs per request against the body size.
# what = 'slowloris' (and stalled = "5,000"): rows "name rate_without rate_with p99_without p99_with";
#        two panels of bars, handshakes/s and p99, without and with stalled connections.

set terminal pngcairo size 1200,500 font "sans,10" noenhanced
set output out
set datafile missing "NaN"
set key top left
set grid ytics
n = words(names)

if (what eq 'keepalive') {
    set multiplot layout 1,2 title "Keep-alive requests against request and response body size (medians)"
    set logscale x 10
    set xrange [5:20000]
    set xlabel "body bytes (request body = response body)"
    set ylabel "requests/s"
    set yrange [0:*]
    plot for [i=1:n] dat using 1:(column(2*i)) with linespoints lw 2 pt 7 title word(names, i)
    set ylabel "proxy CPU µs per request"
    set key top left
    plot for [i=1:n] dat using 1:(column(2*i+1)) with linespoints lw 2 pt 7 title word(names, i)
    unset multiplot
}

if (what eq 'slowloris') {
    set multiplot layout 1,2 title "Healthy full TLS 1.3 handshakes without and with ".stalled." stalled connections (medians)"
    set style data histograms
    set style histogram clustered gap 1
    set style fill solid 0.8 border -1
    set boxwidth 0.9
    set yrange [0:*]
    set ylabel "handshakes/s"
    plot dat using 2:xtic(1) title "without", '' using 3 title "with stalled"
    set ylabel "p99 ms"
    plot dat using 4:xtic(1) title "without", '' using 5 title "with stalled"
    unset multiplot
}
