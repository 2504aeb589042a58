// Orthanc Explorer extension of the PACS AI node: a link to the node's job list on every page,
// and the job of the study on a study page.
$(document).ready(function () {
  function addButton(page, label, href) {
    var b = $('<a>').attr('data-role', 'button').attr('href', href).attr('target', '_blank')
      .attr('data-icon', 'search').attr('data-theme', 'e').text(label);
    b.insertAfter($('#' + page + ' .ui-content > :first-child, #' + page + ' .ui-content').first());
    try { b.button(); } catch (e) {}
  }
  $('#lookup').live('pagebeforeshow', function () {
    if (!$('#ainode-jobs').length) {
      var b = $('<a id="ainode-jobs">').attr('href', '../ainode/jobs').attr('target', '_blank').text('AI node jobs');
      $('#lookup .ui-content').prepend(b);
    }
  });
  $('#study').live('pagebeforeshow', function () {
    var id = $.mobile.pageData ? $.mobile.pageData.uuid : null;
    $('#ainode-study-job').remove();
    if (id) {
      var b = $('<a id="ainode-study-job">').attr('href', '../ainode/studies/' + id + '/job')
        .attr('target', '_blank').text('AI node: job of this study');
      $('#study .ui-content').prepend(b);
    }
  });
});
