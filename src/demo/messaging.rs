//! The messaging sections of the demo: queues with competing consumers,
//! priority, the dead letter queue, publish-subscribe, fan-out/fan-in and the
//! claim check. Like the others, each section counts what it shows and fails
//! when a count does not add up.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actorbus::actors::dlq::{DlqFilter, DlqSelector, RedriveOptions};
use actorbus::actors::pool::handler_fn;
use actorbus::actors::queue::RetryPolicy;
use actorbus::actors::scatter_gather::Aggregator;
use actorbus::actors::topic::TopicConfig;
use actorbus::{service_fn, Bus, Envelope, OverflowPolicy, Priority, Request};

use super::{progress, Outcome};

type DemoResult = Result<Outcome, Box<dyn std::error::Error>>;

/// Waits until `done` holds, at most `within`.
async fn until(within: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

pub(super) async fn queues(bus: &Bus, n: u32) -> DemoResult {
    println!("queues: 4 competing workers drain `orders`; every 100th message panics its worker once");
    let orders = bus.queue::<u32>("demo.orders").capacity(10_000).retry(RetryPolicy::IMMEDIATE).start()?;
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let handled = Arc::new(AtomicU32::new(0));
    let (seen2, handled2) = (seen.clone(), handled.clone());
    let pool = bus
        .consumer_pool(&orders, move || {
            let (seen, handled) = (seen2.clone(), handled2.clone());
            handler_fn(move |env: Envelope<u32>| {
                if env.payload % 100 == 0 && env.attempt == 1 {
                    panic!("worker crashed on order {}", env.payload);
                }
                seen.lock().unwrap_or_else(PoisonError::into_inner).insert(env.payload);
                handled.fetch_add(1, Ordering::Relaxed);
                async { Ok(()) }
            })
        })
        .workers(4)
        .start()
        .await?;
    let started = Instant::now();
    for i in 1..=n {
        orders.send(i).await?;
        if i % 1_000 == 0 || i == n {
            progress("orders enqueued", i, n);
        }
    }
    until(Duration::from_secs(30), || orders.stats().acked >= u64::from(n)).await;
    let took = started.elapsed();
    let stats = orders.stats();
    let distinct = seen.lock().unwrap_or_else(PoisonError::into_inner).len();
    let panics = u64::from(n / 100);
    println!(
        "  {} acked in {took:.2?} ({:.0} msg/s), {} redelivered after {} panics, {} workers replaced",
        stats.acked,
        f64::from(n) / took.as_secs_f64(),
        stats.redelivered,
        panics,
        pool.restarts()
    );
    pool.stop().await;

    println!("  priority: 5 tickets enqueued in arrival order, delivered by level");
    let tickets = bus.queue::<String>("demo.tickets").priority(None).start()?;
    for (text, level) in [("newsletter", 0), ("outage", 9), ("password reset", 5), ("billing", 5), ("db down", 9)] {
        tickets.send_envelope(Envelope::new(text.to_owned()).with_priority(Priority::new(level)?)).await?;
    }
    let mut consumer = tickets.consumer(1).await?;
    let mut order = Vec::new();
    for _ in 0..5 {
        let Some(d) = consumer.recv().await else { break };
        order.push(format!("{}:{}", d.envelope().priority.get(), d.payload()));
        d.ack();
    }
    println!("  {}", order.join(" > "));
    let expected = ["9:outage", "9:db down", "5:password reset", "5:billing", "0:newsletter"];
    let ok = stats.acked == u64::from(n) && distinct == n as usize && stats.dead_lettered == 0 && order == expected;
    Ok(Outcome {
        pattern: "queues",
        ok,
        detail: format!(
            "{}/{n} processed by 4 workers, {} redeliveries, 0 lost; priority order {}",
            distinct,
            stats.redelivered,
            if order == expected { "kept" } else { "BROKEN" }
        ),
    })
}

pub(super) async fn dead_letters(bus: &Bus) -> DemoResult {
    println!("dead letter queue: `emails` gives up after 3 deliveries; an expired message never reaches a handler");
    let emails = bus.queue::<String>("demo.emails").max_deliveries(3).retry(RetryPolicy::IMMEDIATE).start()?;
    emails.send("to: nobody@invalid".into()).await?;
    emails.send_envelope(Envelope::new("stale digest".to_owned()).with_timeout(Duration::from_millis(10))).await?;
    actix_rt::time::sleep(Duration::from_millis(30)).await;
    let mut consumer = emails.consumer(1).await?;
    let mut attempts = 0;
    while emails.stats().dead_lettered < 2 {
        match actix_rt::time::timeout(Duration::from_secs(5), consumer.recv()).await {
            Ok(Some(d)) => {
                attempts += 1;
                d.nack_with(actorbus::FailureReason::Failed("smtp: mailbox unavailable".into()));
            }
            _ => break,
        }
    }
    let source = DlqFilter::default().source("queue", "demo.emails");
    for l in bus.dlq().list(source.clone()).await? {
        println!("  dead letter {}: reason={} attempts={} history={}", l.id, l.reason, l.attempts, l.errors.len());
    }
    let report = bus.dlq().redrive(source.clone().reason("max_deliveries"), RedriveOptions::to_source()).await?;
    let back = match actix_rt::time::timeout(Duration::from_secs(5), consumer.recv()).await {
        Ok(Some(d)) => {
            let text = d.payload().clone();
            d.ack();
            Some(text)
        }
        _ => None,
    };
    println!("  redriven {} -> processed {:?} after the fix", report.redriven.len(), back);
    let purged = bus.dlq().purge(DlqSelector::from(source.clone())).await?;
    let left = bus.dlq().list(source).await?.len();
    println!("  purged {purged} (the expired one); {left} left for this queue");
    let ok = attempts == 3 && report.redriven.len() == 1 && back.is_some() && purged == 1 && left == 0;
    Ok(Outcome {
        pattern: "dead letters",
        ok,
        detail: format!(
            "2 dead-lettered (max_deliveries after {attempts} attempts, expired), 1 redriven and processed, 1 purged"
        ),
    })
}

#[derive(Clone, Debug, serde::Serialize)]
struct Order {
    id: u32,
    region: &'static str,
}

pub(super) async fn pub_sub(bus: &Bus, n: u32) -> DemoResult {
    println!("publish-subscribe: `orders.eu.created` / `orders.us.created`; `orders.*.created`, `orders.eu.>` and a slow `drop_oldest` reader");
    let eu = bus.topic::<Order>("orders.eu.created")?;
    let us = bus.topic::<Order>("orders.us.created")?;
    let mut all = bus.subscribe::<Order>("orders.*.created").capacity(n as usize).start()?;
    let mut eu_only = bus.subscribe::<Order>("orders.eu.>").capacity(n as usize).start()?;
    let slow = bus.subscribe::<Order>("orders.>").capacity(16).overflow(OverflowPolicy::DropOldest).start()?;
    let big = bus
        .subscribe::<Order>("orders.>")
        .capacity(n as usize)
        .filter(|e: &Envelope<Order>| e.payload.id % 10 == 0)
        .start()?;
    let started = Instant::now();
    for id in 0..n {
        let (topic, region) = if id % 2 == 0 { (&eu, "eu") } else { (&us, "us") };
        topic.publish(Order { id, region }).await?;
    }
    let took = started.elapsed();
    // Every publish has returned, so everything the subscriptions took is buffered now.
    let (mut got_all, mut got_eu) = (0u32, 0u32);
    for _ in 0..all.stats().buffered {
        got_all += u32::from(all.next().await.is_some());
    }
    for _ in 0..eu_only.stats().buffered {
        got_eu += u32::from(eu_only.next().await.is_some_and(|m| m.payload.region == "eu"));
    }
    let slow_stats = slow.stats();
    let filtered = big.stats().buffered;
    println!(
        "  published {n} in {took:.2?}: `orders.*.created` got {got_all}, `orders.eu.>` got {got_eu}, \
         the slow reader kept {} and dropped {}, the filter kept {filtered}",
        slow_stats.buffered, slow_stats.lost
    );
    let ok = got_all == n
        && got_eu == n.div_ceil(2)
        && slow_stats.buffered + slow_stats.lost as usize == n as usize
        && filtered == n.div_ceil(10) as usize;
    Ok(Outcome {
        pattern: "pub/sub",
        ok,
        detail: format!("{n} published; wildcards, a drop_oldest reader ({} dropped), a filter", slow_stats.lost),
    })
}

#[derive(Clone, serde::Serialize)]
struct ShippingQuote {
    kg: u32,
}
impl Request for ShippingQuote {
    type Response = u32;
}

pub(super) async fn fan_out(bus: &Bus) -> DemoResult {
    println!("fan-out/fan-in: a quote from 5 carriers; one is slow, one panics");
    for (name, per_kg, delay_ms) in [("dhl", 9, 5), ("ups", 8, 10), ("fedex", 11, 1), ("postnl", 7, 400)] {
        bus.service(name, move || {
            service_fn(move |q: ShippingQuote, _| async move {
                actix_rt::time::sleep(Duration::from_millis(delay_ms)).await;
                Ok(q.kg * per_kg)
            })
        })
        .start()
        .await?;
    }
    bus.service("crashy", || service_fn(|_: ShippingQuote, _| async { panic!("carrier API changed") })).start().await?;
    let carriers = ["dhl", "ups", "fedex", "postnl", "crashy"];
    let ask =
        || bus.scatter("shipping", ShippingQuote { kg: 3 }).services(carriers).timeout(Duration::from_millis(200));
    let cheapest = || Aggregator::fold(u32::MAX, |best: u32, _carrier, price| best.min(price));
    let mut lines = Vec::new();
    let in_dlq = || async { bus.dlq().list(DlqFilter::default().source("scatter_gather", "shipping")).await };
    let before = in_dlq().await?.len();
    let all = ask().dead_letter_on_timeout().run(cheapest()).await?;
    let first = ask().first(2).run(cheapest()).await?;
    let quorum = ask().quorum().run(cheapest()).await?;
    for (label, r) in [("all, 200 ms", &all), ("first 2", &first), ("quorum", &quorum)] {
        println!(
            "  {label:<12} completed by {:<9} best {:>3}  replied {:?} missing {:?} failed {:?}",
            r.completed_by.to_string(),
            r.aggregate,
            r.replied,
            r.missing,
            r.failed.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>()
        );
        lines.push(format!("{label}: {}", r.completed_by));
    }
    let timed_out = in_dlq().await?.len() - before;
    println!("  the timed-out gather went to the DLQ: {timed_out} new entry");
    let ok = all.missing == ["postnl"]
        && all.failed.len() == 1
        && all.aggregate == 24
        && first.replied.len() == 2
        && quorum.replied.len() >= 3
        && timed_out == 1;
    Ok(Outcome { pattern: "fan-out/fan-in", ok, detail: lines.join(", ") })
}

pub(super) async fn claim_check(bus: &Bus) -> DemoResult {
    println!("claim check: 1 MB scans travel as tickets above 64 KiB; subscribers get the bytes");
    let claims = bus.claim_check().clone();
    let scans =
        bus.create_topic::<Vec<u8>>("scans.uploaded", TopicConfig::new().claim_check(claims.clone(), 64 * 1024))?;
    let mut ocr = bus.subscribe::<Vec<u8>>("scans.*").start()?;
    let mut archive = bus.subscribe::<Vec<u8>>("scans.>").start()?;
    let scan: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let receipt = scans.publish(scan.clone()).await?;
    let held = claims.stats().await?;
    let buffered = ocr.stats().buffered_tickets;
    let a = ocr.next().await.ok_or("ocr closed")?.payload;
    let b = archive.next().await.ok_or("archive closed")?.payload;
    let after = claims.stats().await?;
    println!(
        "  as a ticket: {}; store held {} payload ({} bytes); each subscription buffered {buffered} ticket; \
         both got identical bytes: {}; store after both took it: {}",
        receipt.claim_checked,
        held.payloads,
        held.bytes,
        a == scan && b == scan,
        after.payloads
    );
    let ok =
        receipt.claim_checked && held.payloads == 1 && buffered == 1 && a == scan && b == scan && after.payloads == 0;
    Ok(Outcome {
        pattern: "claim check",
        ok,
        detail: format!("1 MiB stored once, claimed twice, freed by the last reader ({} left)", after.payloads),
    })
}
