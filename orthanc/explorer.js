// Orthanc Explorer extension of the PACS AI node (registered by node/orthanc_plugin.py).
// On a study page: the study's AI job, a button to run the AI again, and the OHIF viewer.
// On the lookup page: the node's job list. AINODE_VIEWER_URL is filled in by the plugin.
var AINODE_VIEWER_URL = '__AINODE_VIEWER_URL__';

function ainodeButton(label, icon, onClick) {
  var b = $('<a>').attr('data-role', 'button').attr('href', '#').attr('data-icon', icon)
    .attr('data-theme', 'e').text(label);
  b.click(function (e) { e.preventDefault(); onClick(); });
  return b;
}

$('#study').live('pagebeforecreate', function () {
  var anchor = $('#study-delete').parent().parent();
  ainodeButton('AI node: job of this study', 'info', function () {
    window.open('../ainode/studies/' + $.mobile.pageData.uuid + '/job');
  }).insertBefore(anchor);
  ainodeButton('AI node: run again', 'refresh', function () {
    $.ajax({ url: '../ainode/studies/' + $.mobile.pageData.uuid + '/rerun', type: 'POST',
             success: function () { alert('Queued for the AI node'); },
             error: function (x) { alert('AI node: ' + x.responseText); } });
  }).insertBefore(anchor);
  if (AINODE_VIEWER_URL && AINODE_VIEWER_URL.indexOf('__') !== 0) {
    ainodeButton('Open in OHIF viewer', 'search', function () {
      $.ajax({ url: '../studies/' + $.mobile.pageData.uuid, dataType: 'json', success: function (s) {
        window.open(AINODE_VIEWER_URL + '/viewer?StudyInstanceUIDs=' + s.MainDicomTags.StudyInstanceUID);
      } });
    }).insertBefore(anchor);
  }
});

$('#lookup').live('pagebeforecreate', function () {
  ainodeButton('AI node jobs', 'grid', function () { window.open('../ainode/jobs'); })
    .insertBefore($('#lookup').find('form').first());
});
