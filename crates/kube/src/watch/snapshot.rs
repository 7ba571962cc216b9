//! A stream stage: the watcher's Init / InitApply / InitDone are buffered into one
//! whole listing, so a relist replaces what was known at once and never looks like
//! deletions. An error in the middle of a listing drops the partial buffer.

use futures::{future, Stream, StreamExt};
use kube::runtime::watcher;

/// A change of one kind of object, as the sync loop wants it.
#[derive(Debug, Clone, PartialEq)]
pub enum Snapshot<K> {
    /// Every object there is (a complete listing).
    Reset(Vec<K>),
    /// One object was created or changed.
    Applied(K),
    /// One object was deleted.
    Deleted(K),
}

/// Turns watcher events into [`Snapshot`]s; errors pass through.
pub fn snapshots<K, E>(
    events: impl Stream<Item = Result<watcher::Event<K>, E>>,
) -> impl Stream<Item = Result<Snapshot<K>, E>> {
    events
        .scan(None::<Vec<K>>, |listing, event| {
            let out = match event {
                Ok(watcher::Event::Init) => {
                    *listing = Some(Vec::new());
                    None
                }
                Ok(watcher::Event::InitApply(object)) => {
                    listing.get_or_insert_with(Vec::new).push(object);
                    None
                }
                Ok(watcher::Event::InitDone) => {
                    Some(Ok(Snapshot::Reset(listing.take().unwrap_or_default())))
                }
                Ok(watcher::Event::Apply(object)) => Some(Ok(Snapshot::Applied(object))),
                Ok(watcher::Event::Delete(object)) => Some(Ok(Snapshot::Deleted(object))),
                Err(err) => {
                    *listing = None;
                    Some(Err(err))
                }
            };
            future::ready(Some(out))
        })
        .filter_map(future::ready)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;

    type Event = Result<watcher::Event<u32>, &'static str>;

    async fn run(events: Vec<Event>) -> Vec<Result<Snapshot<u32>, &'static str>> {
        snapshots(stream::iter(events)).collect().await
    }

    #[tokio::test]
    async fn a_listing_arrives_whole_then_changes_one_by_one() {
        use watcher::Event::*;
        let out = run(vec![
            Ok(Init),
            Ok(InitApply(1)),
            Ok(InitApply(2)),
            Ok(InitDone),
            Ok(Apply(3)),
            Ok(Delete(1)),
        ])
        .await;
        assert_eq!(
            out,
            [
                Ok(Snapshot::Reset(vec![1, 2])),
                Ok(Snapshot::Applied(3)),
                Ok(Snapshot::Deleted(1)),
            ]
        );
    }

    #[tokio::test]
    async fn an_error_mid_listing_drops_the_partial_listing() {
        use watcher::Event::*;
        let out = run(vec![
            Ok(Init),
            Ok(InitApply(1)),
            Err("connection refused"),
            Ok(Init),
            Ok(InitApply(2)),
            Ok(InitDone),
        ])
        .await;
        assert_eq!(
            out,
            [Err("connection refused"), Ok(Snapshot::Reset(vec![2]))]
        );
    }
}
