//! The six figures of the paper, rebuilt from measured data as SVG
//! (plotters' SVG backend: plain `<text>` elements, no font files needed).

use crate::metrics::stats::mean;
use anyhow::{Result, bail};
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::compare::Comparison;
use super::paper::Paper;
use crate::scenario::{Compare, Mode, System, Verdict};

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

const E2EE: RGBColor = RGBColor(31, 119, 180);
const BASE: RGBColor = RGBColor(255, 127, 14);
const PASS: RGBColor = RGBColor(44, 160, 44);
const FAIL: RGBColor = RGBColor(214, 39, 40);
const GREY: RGBColor = RGBColor(110, 110, 110);

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("figure: {e}")
}

fn text(area: &Area<'_>, s: &str, x: i32, y: i32, size: u32, color: &RGBColor) -> Result<()> {
    area.draw(&Text::new(
        s.to_owned(),
        (x, y),
        ("sans-serif", size).into_font().color(color),
    ))
    .map_err(err)
}

fn title(area: &Area<'_>, s: &str) -> Result<()> {
    text(area, s, 14, 10, 20, &BLACK)
}

/// Draws a chart's legend, framed, at `position`.
fn legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    position: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(err)
}

/// Cuts `s` into lines of at most `width` characters, at spaces where it
/// can (a longer word is cut).
fn wrap(s: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in s.split(' ') {
        let mut word: Vec<char> = word.chars().collect();
        if !line.is_empty() && line.chars().count() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        while word.len() > width {
            let rest = word.split_off(width);
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            lines.push(word.iter().collect());
            word = rest;
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.extend(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// Writes the six figures into `out`.
pub(crate) fn all(out: &Path, p: &Paper) -> Result<()> {
    fig1(&out.join("fig1_performance_security.svg"), p)?;
    fig2(&out.join("fig2_data_collection.svg"), p)?;
    fig3(&out.join("fig3_latency_throughput.svg"), p)?;
    fig4(&out.join("fig4_e2ee_process.svg"), p)?;
    fig5(&out.join("fig5_results.svg"), p)?;
    fig6(&out.join("fig6_future_scope.svg"), p)?;
    Ok(())
}

/// Fig. 1: E2EE vs baseline latency (p50, p99) and saturation throughput,
/// beside the verdict of every security check.
fn fig1(path: &Path, p: &Paper) -> Result<()> {
    let root = SVGBackend::new(path, (1100, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    title(
        &root,
        "Fig. 1 - Performance and security overview (measured)",
    )?;
    let body = root.margin(40, 10, 10, 10);
    let (left, right) = body.split_horizontally(700);
    let (lat, thr) = left.split_horizontally(380);

    fig1_latency(&lat, p)?;
    fig1_throughput(&thr, p)?;
    fig1_security(&right, p)?;
    root.present().map_err(err)
}

/// Fig. 1, left: p50 and p99 of E2EE beside the baseline.
fn fig1_latency(lat: &Area<'_>, p: &Paper) -> Result<()> {
    let r = &p.repeats;
    let vals = [
        (
            "p50",
            mean(r.iter().map(|x| x.e2ee_p50_us as f64)) / 1000.0,
            mean(r.iter().map(|x| x.baseline_p50_us as f64)) / 1000.0,
        ),
        (
            "p99",
            mean(r.iter().map(|x| x.e2ee_p99_us as f64)) / 1000.0,
            mean(r.iter().map(|x| x.baseline_p99_us as f64)) / 1000.0,
        ),
    ];
    let ymax = vals.iter().map(|v| v.1.max(v.2)).fold(0.1, f64::max) * 1.25;
    let mut chart = ChartBuilder::on(lat)
        .caption("End-to-end latency (mean of repeats)", ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..2f64, 0f64..ymax)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("latency (ms)")
        .draw()?;
    for (i, (label, e, b)) in vals.iter().enumerate() {
        let x = i as f64;
        chart.draw_series([
            Rectangle::new([(x + 0.15, 0.0), (x + 0.48, *e)], E2EE.filled()),
            Rectangle::new([(x + 0.52, 0.0), (x + 0.85, *b)], BASE.filled()),
        ])?;
        chart.draw_series([
            Text::new(
                format!("{e:.2}"),
                (x + 0.17, *e + ymax * 0.05),
                ("sans-serif", 12),
            ),
            Text::new(
                format!("{b:.2}"),
                (x + 0.54, *b + ymax * 0.05),
                ("sans-serif", 12),
            ),
            Text::new(
                (*label).to_owned(),
                (x + 0.42, -ymax * 0.06),
                ("sans-serif", 14),
            ),
        ])?;
    }
    chart
        .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())?
        .label("E2EE")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], E2EE.filled()));
    chart
        .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())?
        .label("plaintext baseline")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], BASE.filled()));
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    Ok(())
}

/// Fig. 1, middle: saturation throughput of both modes.
fn fig1_throughput(thr: &Area<'_>, p: &Paper) -> Result<()> {
    let tmax = p.saturation_e2ee.max(p.saturation_baseline).max(1.0) * 1.25;
    let mut chart = ChartBuilder::on(thr)
        .caption("Saturation throughput", ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..1f64, 0f64..tmax)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("delivered messages / s")
        .draw()?;
    chart.draw_series([
        Rectangle::new([(0.15, 0.0), (0.48, p.saturation_e2ee)], E2EE.filled()),
        Rectangle::new([(0.52, 0.0), (0.85, p.saturation_baseline)], BASE.filled()),
    ])?;
    chart.draw_series([
        Text::new(
            format!("{:.0}", p.saturation_e2ee),
            (0.17, p.saturation_e2ee + tmax * 0.04),
            ("sans-serif", 12),
        ),
        Text::new(
            format!("{:.0}", p.saturation_baseline),
            (0.54, p.saturation_baseline + tmax * 0.04),
            ("sans-serif", 12),
        ),
        Text::new(
            "E2EE      baseline".to_owned(),
            (0.2, -tmax * 0.06),
            ("sans-serif", 13),
        ),
    ])?;
    Ok(())
}

/// Fig. 1, right: the security checks and the two headline numbers.
fn fig1_security(right: &Area<'_>, p: &Paper) -> Result<()> {
    text(right, "Security checks (E2EE runs)", 10, 10, 16, &BLACK)?;
    for (i, (name, v, _)) in p.security.iter().enumerate() {
        let y = 50 + 34 * i as i32;
        let (label, color) = match v {
            Verdict::Pass => ("PASS", PASS),
            Verdict::Fail => ("FAIL", FAIL),
            Verdict::Skipped => ("SKIPPED", GREY),
        };
        right.draw(&Rectangle::new([(10, y - 2), (82, y + 20)], color.filled()))?;
        text(right, label, 18, y + 1, 14, &WHITE)?;
        text(right, name, 95, y + 1, 14, &BLACK)?;
    }
    let y = 60 + 34 * p.security.len() as i32;
    text(
        right,
        &format!(
            "p50 overhead: x{:.2} +/- {:.2} (n = {})",
            p.p50_ratio.mean, p.p50_ratio.sd, p.p50_ratio.n
        ),
        10,
        y,
        13,
        &BLACK,
    )?;
    text(
        right,
        &format!(
            "client encrypt+decrypt p50: {:.0} us",
            p.encrypt_decrypt_p50_us.mean
        ),
        10,
        y + 22,
        13,
        &BLACK,
    )?;
    Ok(())
}

/// Fig. 2: the events of one message with real timestamps, per actor.
fn fig2(path: &Path, p: &Paper) -> Result<()> {
    let root = SVGBackend::new(path, (1100, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    title(
        &root,
        "Fig. 2 - Data collection: every event of one message, as timed in this run",
    )?;
    let body = root.margin(40, 10, 10, 20);
    let tmax = p.timeline.iter().map(|e| e.at_ms).fold(1.0, f64::max) * 1.08;
    let lanes = ["alice", "server", "bob"];
    let mut chart = ChartBuilder::on(&body)
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..tmax, -0.5f64..2.5f64)?;
    chart
        .configure_mesh()
        .x_desc("time since the sample began (ms)")
        .y_labels(3)
        .y_label_formatter(&|y| {
            let i = y.round() as usize;
            lanes.get(i).map(|s| (*s).to_owned()).unwrap_or_default()
        })
        .draw()?;
    let mut per_lane = [0usize; 3];
    for e in &p.timeline {
        let lane_index = lanes.iter().position(|l| *l == e.actor).unwrap_or(1);
        let k = per_lane[lane_index];
        per_lane[lane_index] += 1;
        let lane = lane_index as f64;
        let color = match e.actor {
            "alice" => E2EE,
            "bob" => PASS,
            _ => BASE,
        };
        chart.draw_series([Circle::new((e.at_ms, lane), 5, color.filled())])?;
        // Stagger labels over six rows per lane so neighbours do not overlap.
        let dy = [0.1, -0.16, 0.22, -0.28, 0.34, -0.4][k % 6];
        chart.draw_series([Text::new(
            format!("{} ({:.2})", e.what, e.at_ms),
            (e.at_ms, lane + dy),
            ("sans-serif", 11),
        )])?;
    }
    root.present().map_err(err)
}

/// Fig. 3: latency distribution (CDF) and throughput against offered load.
fn fig3(path: &Path, p: &Paper) -> Result<()> {
    let root = SVGBackend::new(path, (1100, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    title(
        &root,
        "Fig. 3 - Latency distribution and throughput up to saturation",
    )?;
    let body = root.margin(40, 10, 10, 10);
    let (left, right) = body.split_horizontally(550);

    let xmax = p
        .e2ee_cdf
        .iter()
        .chain(&p.baseline_cdf)
        .map(|(_, v)| *v as f64 / 1000.0)
        .fold(0.1, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&left)
        .caption(
            "End-to-end latency, cumulative distribution",
            ("sans-serif", 15),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d((0.05f64..xmax).log_scale(), 0f64..100f64)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, log scale)")
        .y_desc("percentile")
        .draw()?;
    for (cdf, color, label) in [
        (&p.e2ee_cdf, E2EE, "E2EE"),
        (&p.baseline_cdf, BASE, "plaintext baseline"),
    ] {
        chart
            .draw_series(LineSeries::new(
                cdf.iter()
                    .map(|(q, v)| ((*v as f64 / 1000.0).max(0.05), q * 100.0)),
                color.stroke_width(2),
            ))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;

    let rmax = p.sweep.iter().map(|s| s.rate).fold(1.0, f64::max) * 1.1;
    let dmax = p
        .sweep
        .iter()
        .map(|s| s.delivered_rate)
        .fold(1.0, f64::max)
        .max(rmax);
    let mut chart = ChartBuilder::on(&right)
        .caption("Delivered vs offered load (sweep)", ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..rmax, 0f64..dmax)?;
    chart
        .configure_mesh()
        .x_desc("offered (messages / s)")
        .y_desc("delivered (messages / s)")
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, 0.0), (rmax, rmax)],
            GREY.stroke_width(1),
        ))?
        .label("offered = delivered")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], GREY));
    for (mode, color, label) in [
        (Mode::E2ee, E2EE, "E2EE"),
        (Mode::PlaintextBaseline, BASE, "plaintext baseline"),
    ] {
        let pts: Vec<(f64, f64)> = p
            .sweep
            .iter()
            .filter(|s| s.mode == mode)
            .map(|s| (s.rate, s.delivered_rate))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.iter().map(|pt| Circle::new(*pt, 4, color.filled())))?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present().map_err(err)
}

/// Fig. 4: the sample message at the sender, at the server, at the recipient.
fn fig4(path: &Path, p: &Paper) -> Result<()> {
    let root = SVGBackend::new(path, (1100, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    title(
        &root,
        "Fig. 4 - The E2EE process as it happened (keys never shown)",
    )?;
    let pr = &p.process;
    let boxes = [
        (
            "Sender (alice) - plaintext",
            E2EE,
            wrap(&pr.sender_plaintext, 34),
            format!("{} bytes", pr.plaintext_len),
        ),
        (
            "Server - bytes read and stored",
            BASE,
            wrap(
                &pr.stored_envelope_hex
                    .chars()
                    .take(34 * 9)
                    .collect::<String>(),
                34,
            ),
            format!(
                "{} bytes, hex (first {} shown)",
                pr.stored_envelope_len,
                (34 * 9 / 2).min(pr.stored_envelope_len)
            ),
        ),
        (
            "Recipient (bob) - plaintext",
            PASS,
            wrap(&pr.recipient_plaintext, 34),
            format!("{} bytes", pr.recipient_plaintext.len()),
        ),
    ];
    for (i, (head, color, lines, foot)) in boxes.iter().enumerate() {
        let x = 20 + 365 * i as i32;
        root.draw(&Rectangle::new(
            [(x, 60), (x + 320, 440)],
            color.stroke_width(3),
        ))?;
        root.draw(&Rectangle::new([(x, 60), (x + 320, 92)], color.filled()))?;
        text(&root, head, x + 10, 68, 15, &WHITE)?;
        for (k, line) in lines.iter().take(10).enumerate() {
            text(&root, line, x + 12, 104 + 30 * k as i32, 13, &BLACK)?;
        }
        text(&root, foot, x + 12, 412, 12, &GREY)?;
        if i < 2 {
            let ax = x + 325;
            root.draw(&PathElement::new(
                vec![(ax, 250), (ax + 35, 250)],
                BLACK.stroke_width(2),
            ))?;
            root.draw(&PathElement::new(
                vec![(ax + 27, 243), (ax + 35, 250), (ax + 27, 257)],
                BLACK.stroke_width(2),
            ))?;
        }
    }
    let verdict = |ok: bool| if ok { "yes" } else { "NO" };
    text(
        &root,
        "Encrypt (Double Ratchet, AES-256-GCM)",
        230,
        456,
        13,
        &GREY,
    )?;
    text(&root, "Decrypt", 760, 456, 13, &GREY)?;
    text(
        &root,
        &format!(
            "Server stored exactly the bytes it read: {}.   Plaintext canary in what the server read: {} hits; in its store: {} hits.   Recipient plaintext = sender plaintext: {}.",
            verdict(pr.received_equals_stored),
            pr.canary_hits_wire,
            pr.canary_hits_store,
            verdict(pr.sender_plaintext == pr.recipient_plaintext)
        ),
        20,
        500,
        13,
        &BLACK,
    )?;
    root.present().map_err(err)
}

fn table(
    path: &Path,
    heading: &str,
    header: [&str; 3],
    widths: [i32; 3],
    rows: &[(String, String, String, Option<bool>)],
) -> Result<()> {
    let height = 90 + 64 * rows.len() as u32;
    let root = SVGBackend::new(path, (1200, height)).into_drawing_area();
    root.fill(&WHITE)?;
    title(&root, heading)?;
    let xs = [20, 20 + widths[0], 20 + widths[0] + widths[1]];
    for (k, h) in header.iter().enumerate() {
        text(&root, h, xs[k], 48, 14, &GREY)?;
    }
    for (i, (a, b, c, ok)) in rows.iter().enumerate() {
        let y = 74 + 64 * i as i32;
        root.draw(&PathElement::new(
            vec![(20, y - 4), (1180, y - 4)],
            GREY.mix(0.4),
        ))?;
        for (k, (cell, width)) in [(a, widths[0]), (b, widths[1])].iter().enumerate() {
            for (l, line) in wrap(cell, (*width as usize) / 8).iter().take(3).enumerate() {
                text(&root, line, xs[k], y + 4 + 18 * l as i32, 13, &BLACK)?;
            }
        }
        let color = match ok {
            Some(true) => PASS,
            Some(false) => FAIL,
            None => GREY,
        };
        for (l, line) in wrap(c, (widths[2] as usize) / 8).iter().take(3).enumerate() {
            text(&root, line, xs[2], y + 4 + 18 * l as i32, 13, &color)?;
        }
    }
    root.present().map_err(err)
}

/// Fig. 5: each claim, the metric that tests it, the value, the verdict.
fn fig5(path: &Path, p: &Paper) -> Result<()> {
    let rows: Vec<(String, String, String, Option<bool>)> = p
        .claims
        .iter()
        .map(|c| {
            (
                c.claim.to_owned(),
                c.metric.clone(),
                format!("{} - {}", if c.pass { "PASS" } else { "FAIL" }, c.value),
                Some(c.pass),
            )
        })
        .collect();
    table(
        path,
        "Fig. 5 - Results: the paper's claims, measured",
        ["claim", "metric", "measured value / verdict"],
        [330, 430, 400],
        &rows,
    )
}

/// Fig. 6: the paper's future scope, with status and evidence here.
fn fig6(path: &Path, p: &Paper) -> Result<()> {
    let rows: Vec<(String, String, String, Option<bool>)> = p
        .future_scope
        .iter()
        .map(|f| {
            (
                f.item.to_owned(),
                f.status.to_owned(),
                f.evidence.clone(),
                match f.status {
                    "not yet" => None,
                    "FAILED" => Some(false),
                    _ => Some(true),
                },
            )
        })
        .collect();
    table(
        path,
        "Fig. 6 - Future scope of the paper: status in this project",
        ["item", "status", "evidence"],
        [330, 160, 670],
        &rows,
    )
}

/// The comparison figure: delivered vs offered load for every system, and
/// latency percentiles at the equal offered load.
pub(crate) fn compare(path: &Path, c: &Comparison) -> Result<()> {
    let Some(cmp) = &c.scenario.compare else {
        bail!("figure: not a comparison");
    };
    let root = SVGBackend::new(path, (1100, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    title(
        &root,
        "Chatify beside the bare relay floor and Socket.io (same workload, same E2EE envelopes)",
    )?;
    let body = root.margin(40, 10, 10, 10);
    let (left, right) = body.split_horizontally(550);

    compare_rates(&left, c, cmp)?;
    compare_latency(&right, c, cmp)?;
    root.present().map_err(err)
}

/// A system's colour in the comparison.
fn colour(s: System) -> RGBColor {
    match s {
        System::Chatify => E2EE,
        System::ChatifyPlaintext => BASE,
        System::Floor => PASS,
        System::Socketio => RGBColor(148, 103, 189),
    }
}

/// The comparison, left: delivered against offered rate, one curve per system.
fn compare_rates(left: &Area<'_>, c: &Comparison, cmp: &Compare) -> Result<()> {
    // Mean delivered rate per (system, offered rate) over repetitions.
    let curve = |s: System| -> Vec<(f64, f64)> {
        cmp.rates
            .iter()
            .filter_map(|&r| {
                let xs: Vec<f64> = c
                    .steps
                    .iter()
                    .filter(|st| st.system == s && st.rate == r)
                    .map(|st| st.delivered_rate)
                    .collect();
                (!xs.is_empty()).then(|| (r, xs.iter().sum::<f64>() / xs.len() as f64))
            })
            .collect()
    };
    let lo = cmp.rates.first().copied().unwrap_or(1.0) * 0.8;
    let hi = cmp.rates.last().copied().unwrap_or(10.0) * 1.25;
    let mut chart = ChartBuilder::on(left)
        .caption(
            "Delivered vs offered load (mean over repetitions)",
            ("sans-serif", 15),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((lo..hi).log_scale(), (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("offered (messages / s, log)")
        .y_desc("delivered (messages / s, log)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    chart
        .draw_series(LineSeries::new([(lo, lo), (hi, hi)], GREY.stroke_width(1)))?
        .label("offered = delivered")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], GREY));
    // Larger markers first, so that systems whose curves coincide all show.
    for (i, &s) in cmp.systems.iter().enumerate() {
        let color = colour(s);
        let pts = curve(s);
        let radius = 7u32.saturating_sub(i as u32 * 2).max(2);
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(s.name())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart.draw_series(
            pts.iter()
                .map(|pt| Circle::new(*pt, radius, color.filled())),
        )?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    Ok(())
}

/// The comparison, right: p50 and p99 of each system at the equal load.
fn compare_latency(right: &Area<'_>, c: &Comparison, cmp: &Compare) -> Result<()> {
    // p50 (solid) and p99 (light) bars per system at the equal load.
    let n = cmp.systems.len();
    let vals: Vec<(System, f64, f64)> = cmp
        .systems
        .iter()
        .filter_map(|s| {
            c.systems
                .get(s.name())
                .map(|x| (*s, x.p50_us.mean / 1000.0, x.p99_us.mean / 1000.0))
        })
        .collect();
    let ymax = vals.iter().map(|v| v.2).fold(0.1, f64::max) * 2.0;
    let mut chart = ChartBuilder::on(right)
        .caption(
            format!(
                "Latency at {} msg/s offered: p50 (solid), p99 (light)",
                cmp.equal_load_rate
            ),
            ("sans-serif", 15),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..n as f64, (0.05f64..ymax).log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("latency (ms, log scale)")
        .draw()?;
    for (i, (s, p50, p99)) in vals.iter().enumerate() {
        let x = i as f64;
        let color = colour(*s);
        chart.draw_series([
            Rectangle::new(
                [(x + 0.15, 0.05), (x + 0.5, p99.max(0.05))],
                color.mix(0.35).filled(),
            ),
            Rectangle::new([(x + 0.5, 0.05), (x + 0.85, p50.max(0.05))], color.filled()),
        ])?;
        chart.draw_series([
            Text::new(
                format!("{p50:.2} / {p99:.2} ms"),
                (x + 0.12, (p99 * 1.25).max(0.06)),
                ("sans-serif", 12).into_font(),
            ),
            Text::new(
                s.name().to_owned(),
                (x + 0.12, 0.065),
                ("sans-serif", 12).into_font().color(&BLACK),
            ),
        ])?;
    }
    Ok(())
}

/// The malicious-server suite as a matrix: one row per attack, one column
/// per check, green for pass and red for fail.
pub(crate) fn security_matrix(path: &Path, verdicts: &[super::adversary::AttackRow]) -> Result<()> {
    let columns = [
        "nothing forged shown",
        "expected reaction",
        "next honest message",
    ];
    let row_h = 24i32;
    let height = 90 + row_h * verdicts.len() as i32 + 30;
    let root = SVGBackend::new(path, (980, height as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    title(
        &root,
        "Malicious server: every attack, the client's reaction, and what got through",
    )?;
    let x0 = 430;
    let col_w = 170;
    for (j, c) in columns.iter().enumerate() {
        text(&root, c, x0 + j as i32 * col_w + 8, 52, 14, &BLACK)?;
    }
    for (i, v) in verdicts.iter().enumerate() {
        let y = 75 + i as i32 * row_h;
        text(
            &root,
            &format!("{} (expect {})", v.attack, v.expect),
            14,
            y + 5,
            13,
            &BLACK,
        )?;
        for (j, (pass, _)) in v.checks.iter().enumerate() {
            let x = x0 + j as i32 * col_w;
            let color = if *pass { PASS } else { FAIL };
            root.draw(&Rectangle::new(
                [(x, y), (x + col_w - 6, y + row_h - 4)],
                color.mix(0.85).filled(),
            ))?;
            text(
                &root,
                if *pass { "pass" } else { "FAIL" },
                x + 8,
                y + 4,
                13,
                &WHITE,
            )?;
        }
    }
    let passed = verdicts.iter().filter(|v| v.pass).count();
    text(
        &root,
        &format!("{passed} of {} attacks defeated", verdicts.len()),
        14,
        height - 26,
        14,
        &GREY,
    )?;
    root.present().map_err(err)
}

/// Several nodes: left, p50 and p99 of each configuration at the same
/// offered load (median over repeats); right, each fault's catch-up (the
/// longest a delivery arrived after it was due) against the 5 s bound.
pub(crate) fn nodes(path: &Path, n: &super::nodes::Nodes) -> Result<()> {
    let root = SVGBackend::new(path, (1100, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    title(
        &root,
        "Several nodes on PostgreSQL and NATS: latency beside one node, and catch-up after faults",
    )?;
    let body = root.margin(40, 10, 10, 10);
    let (left, right) = body.split_horizontally(600);

    let median = |xs: &[u64]| {
        crate::metrics::stats::Spread::of(&xs.iter().map(|&x| x as f64).collect::<Vec<_>>()).median
            / 1000.0
    };
    let vals: Vec<(&str, f64, f64)> = n
        .configs
        .iter()
        .map(|c| (c.name.as_str(), median(&c.p50_us), median(&c.p99_us)))
        .collect();
    let ymax = vals.iter().map(|v| v.2).fold(0.1, f64::max) * 1.3;
    let mut chart = ChartBuilder::on(&left)
        .caption(
            format!(
                "Latency at {} msg/s offered: p50 (solid), p99 (light)",
                n.rate
            ),
            ("sans-serif", 15),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..vals.len().max(1) as f64, 0f64..ymax)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("latency (ms)")
        .draw()?;
    for (i, (name, p50, p99)) in vals.iter().enumerate() {
        let x = i as f64;
        chart.draw_series([
            Rectangle::new([(x + 0.15, 0.0), (x + 0.5, *p99)], E2EE.mix(0.35).filled()),
            Rectangle::new([(x + 0.5, 0.0), (x + 0.85, *p50)], E2EE.filled()),
        ])?;
        chart.draw_series([
            Text::new(
                format!("{p50:.2} / {p99:.2} ms"),
                (x + 0.12, p99 + ymax * 0.04),
                ("sans-serif", 12).into_font(),
            ),
            Text::new(
                (*name).to_owned(),
                (x + 0.12, ymax * 0.97),
                ("sans-serif", 12).into_font().color(&BLACK),
            ),
        ])?;
    }

    let bound = 5.0;
    let lags: Vec<(&str, f64, bool)> = n
        .faults
        .iter()
        .map(|f| {
            (
                f.name.as_str(),
                f.catch_up_ms.unwrap_or(0.0) / 1000.0,
                f.as_expected,
            )
        })
        .collect();
    let ymax = lags.iter().map(|l| l.1).fold(bound, f64::max) * 1.2;
    let mut chart = ChartBuilder::on(&right)
        .caption("Catch-up after each fault (s)", ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..lags.len().max(1) as f64, 0f64..ymax)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("seconds after due")
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, bound), (lags.len().max(1) as f64, bound)],
            FAIL.stroke_width(2),
        ))?
        .label("bound: 5 s")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], FAIL.stroke_width(2)));
    for (i, (name, lag, ok)) in lags.iter().enumerate() {
        let x = i as f64;
        let color = if *ok { PASS } else { FAIL };
        chart.draw_series([Rectangle::new(
            [(x + 0.2, 0.0), (x + 0.8, *lag)],
            color.filled(),
        )])?;
        chart.draw_series([
            Text::new(
                format!("{lag:.2} s"),
                (x + 0.25, lag + ymax * 0.04),
                ("sans-serif", 12).into_font(),
            ),
            Text::new(
                (*name).to_owned(),
                (x + 0.2, ymax * 0.97),
                ("sans-serif", 12).into_font().color(&BLACK),
            ),
        ])?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present().map_err(err)
}
